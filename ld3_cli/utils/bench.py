"""Timing helpers for benchmarks: device-synchronised wall clocks, peak memory, host-sync counts, tables.

All times are wall-clock seconds (``time.perf_counter``).  On CUDA every measurement is bracketed by
``torch.cuda.synchronize`` so queued kernels are counted where they run, not where they were launched.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (reset at the start of a measurement) and
the process's peak resident set size on CPU (``VmHWM``, reset through ``/proc/self/clear_refs`` where
Linux allows it; otherwise the lifetime peak ``ru_maxrss``, and :func:`peak_memory` says which).
"""
from __future__ import annotations

import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - no MPS in CI
        torch.mps.synchronize()


@dataclass
class Timing:
    """Repeated wall-clock measurements of one callable (seconds)."""

    times: list = field(default_factory=list)
    warmup: int = 0

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    def as_dict(self) -> dict:
        return {**asdict(self), "best": self.best, "median": self.median, "mean": self.mean}


def time_fn(fn: Callable[[], Any], device: torch.device | str, reps: int = 3, warmup: int = 1,
            min_time: float = 0.0, max_reps: int = 1000) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then at least ``reps`` times (and until ``min_time`` seconds
    have been spent timing, at most ``max_reps`` times), each call timed with device syncs around it.

    On a shared machine :attr:`Timing.best` (the least-disturbed run) is the most stable estimate of
    the intrinsic cost; :attr:`Timing.median` is kept as well.
    """
    if reps < 1:
        raise ValueError("reps must be at least 1")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(times=times, warmup=warmup)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds`` (device-synchronised at both ends)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


# ------------------------------------------------------------------------------------------------
# memory

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_bytes() -> dict[str, int]:
    """This process's ``Vm*`` sizes from /proc/self/status (``VmHWM``, ``VmRSS`` ...), in bytes; empty off Linux."""
    try:
        lines = _PROC_STATUS.read_text().splitlines()
    except OSError:
        return {}
    sizes = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.startswith("Vm"):  # "VmHWM:	  532951 kB"
            sizes[key] = int(value.split()[0]) * 1024
    return sizes


def reset_peak_memory(device: torch.device | str) -> bool:
    """Start a new peak-memory window; returns False when only the process-lifetime peak is available."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        return False
    vm = _proc_status_bytes()
    hwm, rss = vm.get("VmHWM"), vm.get("VmRSS")
    # a kernel that ignores the request leaves the lifetime peak in place: then there is no window
    return hwm is not None and rss is not None and hwm <= rss + 32 * 2**20


def peak_memory(device: torch.device | str, window: bool = True) -> dict:
    """``{"bytes": int, "kind": str}``: the peak since :func:`reset_peak_memory` (``window`` = it succeeded)."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda max_memory_allocated"}
    hwm = _proc_status_bytes().get("VmHWM") if window else None
    if hwm is not None:
        return {"bytes": hwm, "kind": "cpu peak RSS of the process in this section (VmHWM)"}
    import resource

    return {"bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "kind": "cpu peak RSS of the process since start (ru_maxrss)"}


# ------------------------------------------------------------------------------------------------
# host synchronisations


def count_host_syncs(fn: Callable[[], Any], device: torch.device | str) -> Optional[int]:
    """Number of CUDA host synchronisations ``fn()`` performs (``torch.cuda.set_sync_debug_mode``).

    Returns None off CUDA (nothing to count).  Covers what PyTorch's sync debug mode reports
    (``.item()``, ``bool(tensor)``, ``torch.linalg`` error checks, blocking copies ...), not
    synchronisations inside third-party extensions.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    synchronize(device)
    old = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(old)
    synchronize(device)
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


# ------------------------------------------------------------------------------------------------
# how busy the machine is (timings on a shared machine are only as good as this)


def system_load() -> dict:
    """``{"loadavg_1m", "cpu_count", "cpu_pressure_avg10"}``: the 1-minute load average and, where Linux
    reports pressure stall information, the share of the last 10 s in which runnable tasks waited for a CPU."""
    out: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        out["loadavg_1m"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux/macOS
        out["loadavg_1m"] = None
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]  # "some avg10=.. avg60=.. ..."
        fields = dict(kv.split("=") for kv in first.split()[1:])
        out["cpu_pressure_avg10"] = float(fields["avg10"]) / 100.0
    except (OSError, IndexError, KeyError, ValueError):
        out["cpu_pressure_avg10"] = None
    return out


# ------------------------------------------------------------------------------------------------
# output


def fmt(v: Any, digits: int = 4) -> str:
    """Compact cell text: floats to ``digits`` significant digits, None to '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], title: str = "") -> str:
    """A plain-text table: ``columns`` are ``(key, header)`` pairs; missing keys print '-'."""
    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


__all__ = ["Timing", "Stopwatch", "time_fn", "synchronize", "reset_peak_memory", "peak_memory",
           "count_host_syncs", "system_load", "format_table", "fmt"]
