"""ld3_cli.utils.bench: repetition rules, peak memory, host-sync counting off CUDA, table layout."""
from __future__ import annotations

import time

import torch

from ld3_cli.utils.bench import (Stopwatch, Timing, count_host_syncs, fmt, format_table, system_load, time_fn)


def test_time_fn_counts_warmup_and_reps():
    calls = []
    t = time_fn(lambda: calls.append(1), "cpu", reps=4, warmup=2)
    assert len(calls) == 6 and len(t.times) == 4 and t.warmup == 2
    assert t.best <= t.median <= max(t.times) and all(x >= 0 for x in t.times)


def test_time_fn_repeats_until_min_time():
    t = time_fn(lambda: time.sleep(0.01), "cpu", reps=1, warmup=0, min_time=0.05)
    assert sum(t.times) >= 0.05 and len(t.times) >= 5
    assert min(t.times) >= 0.01  # each run at least the sleep
    capped = time_fn(lambda: None, "cpu", reps=1, warmup=0, min_time=10.0, max_reps=7)
    assert len(capped.times) == 7


def test_timing_statistics():
    t = Timing(times=[3.0, 1.0, 2.0, 10.0])
    assert (t.best, t.median, t.mean) == (1.0, 2.5, 4.0)
    assert t.as_dict()["best"] == 1.0


def test_stopwatch_measures_a_sleep():
    """Wall time, not CPU time: at least the sleep, however loaded the machine; the sleep itself costs little CPU."""
    cpu0 = time.process_time()
    with Stopwatch("cpu") as sw:
        time.sleep(0.05)
    cpu = time.process_time() - cpu0
    assert sw.seconds >= 0.05
    assert cpu < sw.seconds


def test_stopwatch_is_the_clock_difference(monkeypatch):
    """With a fake clock: exactly the time between entering and leaving the block."""
    from types import SimpleNamespace

    from ld3_cli.utils import bench

    ticks = iter([100.0, 102.5])
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    with Stopwatch("cpu") as sw:
        pass
    assert sw.seconds == 2.5


_PEAK_PROBE = """
import json, torch
from ld3_cli.utils.bench import peak_memory, reset_peak_memory
window = reset_peak_memory("cpu")
before = peak_memory("cpu", window)["bytes"]
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
after = peak_memory("cpu", window)
print(json.dumps({"window": window, "before": before, **after}))
"""


def test_peak_memory_sees_a_large_allocation():
    """In a fresh process (this one's allocator may hand back memory that is already resident)."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bytes"] > 0 and "cpu peak RSS" in out["kind"]
    if out["window"]:  # VmHWM window: the 64 MiB must show up
        assert out["bytes"] - out["before"] >= 60 * 2**20, out
    else:  # without a window the lifetime peak still includes the allocation
        assert out["bytes"] >= 64 * 2**20, out


def test_host_syncs_not_counted_off_cuda():
    assert count_host_syncs(lambda: torch.ones(3).sum().item(), "cpu") is None


def _fake_system(monkeypatch, loadavg, pressure):
    """``os.getloadavg`` returns ``loadavg`` (or raises OSError for None); /proc/pressure/cpu reads ``pressure``
    (or is missing for None)."""
    from pathlib import Path

    from ld3_cli.utils import bench

    def getloadavg():
        if loadavg is None:
            raise OSError("no load average")
        return loadavg

    real_read = Path.read_text

    def read_text(self, *a, **k):
        if str(self) != "/proc/pressure/cpu":
            return real_read(self, *a, **k)
        if pressure is None:
            raise FileNotFoundError(self)
        return pressure

    monkeypatch.setattr(bench.os, "getloadavg", getloadavg)
    monkeypatch.setattr(Path, "read_text", read_text)


def test_system_load_reads_the_load_average_and_cpu_pressure(monkeypatch):
    """The 1-minute load average as the OS gives it; the pressure line's avg10 (a percentage) as a fraction."""
    import os

    pressure = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    _fake_system(monkeypatch, (3.25, 2.0, 1.0), pressure)
    s = system_load()
    assert s == {"cpu_count": os.cpu_count(), "loadavg_1m": 3.25, "cpu_pressure_avg10": 0.125}


def test_system_load_without_the_sources_says_none(monkeypatch):
    _fake_system(monkeypatch, None, None)
    s = system_load()
    assert s["loadavg_1m"] is None and s["cpu_pressure_avg10"] is None and s["cpu_count"] >= 1
    _fake_system(monkeypatch, (0.5, 0.5, 0.5), "garbage")  # an unreadable pressure line is no number either
    assert system_load()["cpu_pressure_avg10"] is None


def test_system_load_on_this_machine():
    """Where the OS has them, the values are this machine's: the load average of os.getloadavg and a pressure
    fraction in [0, 1]."""
    import os

    before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    s = system_load()
    after = os.getloadavg()[0] if before is not None else None
    assert s["cpu_count"] == os.cpu_count()
    if before is not None:  # the kernel updates it every 5 s: it is one of the two reads around the call
        assert min(before, after) <= s["loadavg_1m"] <= max(before, after)
    if s["cpu_pressure_avg10"] is not None:
        assert 0.0 <= s["cpu_pressure_avg10"] <= 1.0


def test_format_table_aligns_columns():
    rows = [{"a": 1, "b": 0.123456}, {"a": 12345, "b": None}, {"a": True}]
    text = format_table(rows, [("a", "A"), ("b", "bee")], "T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["A", "bee"]
    assert lines[3].split() == ["1", "0.1235"] and lines[4].split() == ["12345", "-"]
    assert lines[5].split() == ["yes", "-"]
    assert lines[2] == "-----  ------"  # column widths = widest cell or header
    assert fmt(2.0e-7) == "2e-07" and fmt("x") == "x"
