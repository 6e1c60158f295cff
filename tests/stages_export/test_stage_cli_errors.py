"""Bad input to export / schedules / fid-ref through the CLI: one line on stderr, exit status 2.

One case runs the installed ``ld3`` script as a subprocess in an empty directory (so its store is
empty): the exit status and stderr of a real process for an error raised inside a stage (the
preflight's errors have their own process test in tests/reliability).  The other cases run the
same front end in-process (``ld3_cli.cli.main.main``), which is what the script calls, to save
the start-up time.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LD3 = str(Path(sys.executable).with_name("ld3"))

SUBPROCESS = ("export_no_learned_schedule",)
# name -> (arguments, stage, phrases the error line must contain)
CASES = {
    "export_no_learned_schedule": (["export"], "export", ["no learned schedule", "`ld3 train`"]),
    "export_bad_format": (["export", "export.format=xml"], "export", ["export.format", "json, diffusers"]),
    "schedules_no_learned_schedule": (["schedules", "schedules.include=[ld3]", "nfe=6"], "schedules",
                                      ["no learned schedule", "`ld3 train nfe=6`"]),
    "schedules_bad_name": (["schedules", "schedules.include=[edm,karras]"], "schedules", ["unknown", "karras"]),
    "fid_ref_missing_source": (["fid-ref", "fid_ref.source=no_such_folder"], "fid-ref",
                               ["no_such_folder not found", "fid_ref.source=dataset"]),
    "fid_ref_missing_weights": (["fid-ref", "fid_ref.source=imgs", "eval.inception_weights=nowhere/w.pth",
                                 "fid_ref.out=ref.npz"], "fid-ref",
                                ["FID Inception weights not found", "nowhere/w.pth", "pt_inception"]),
}


def _workdir(tmp_path_factory, name):
    cwd = tmp_path_factory.mktemp(name)
    (cwd / "imgs").mkdir()
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(cwd / "imgs" / "a.png")
    return cwd


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k not in ("LD3_CACHE", "LD3_CONFIG_DIR")}
    env["LD3_THREADS"] = "1"
    procs = {}
    for name in SUBPROCESS:
        cwd = _workdir(tmp_path_factory, name)
        procs[name] = (cwd, subprocess.Popen([LD3, *CASES[name][0]], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
    out = {}
    for name, (cwd, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, cwd)
    return out


def _in_process(name, tmp_path_factory, monkeypatch, capsys):
    from ld3_cli.cli.main import main

    cwd = _workdir(tmp_path_factory, name)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("LD3_CACHE", raising=False)
    capsys.readouterr()
    rc = main(list(CASES[name][0]))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, cwd


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_exit_2(name, request, tmp_path_factory, monkeypatch, capsys):
    if name in SUBPROCESS:
        rc, stdout, stderr, cwd = request.getfixturevalue("results")[name]
    else:
        rc, stdout, stderr, cwd = _in_process(name, tmp_path_factory, monkeypatch, capsys)
    _, stage, phrases = CASES[name]
    assert rc == 2, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"ld3 {stage}: error: "), stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert "Traceback" not in stderr and stdout.strip() == ""
    for cmd in re.findall(r"`([^`]*)`", lines[0]):  # suggested commands carry no option of this stage
        assert "schedules." not in cmd and "export." not in cmd and "fid_ref." not in cmd
    assert not (cwd / "ref.npz").exists()  # nothing written on failure
