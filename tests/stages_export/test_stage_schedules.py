"""``ld3 schedules``: the tables print exactly the library's schedules; the plot is written."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from PIL import Image
from stages_export_helpers import make_ctx

from ld3_cli.errors import ConfigError, MissingArtifactError
from ld3_cli.schedules import discretize
from ld3_cli.stages import artifacts
from ld3_cli.stages import schedules as schedules_stage

# GITS with a tiny warm-up so the test stays fast (the option enters the cache key, as any option does)
GITS_TEST_OPTIONS = {"n_warmup": 16, "n_grid": 21, "batch_size": 16}


def _run(ctx):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = schedules_stage.run(ctx)
    return res, buf.getvalue()


def _table(stdout: str, title_start: str) -> dict[str, list[float]]:
    """The rows of the printed table whose title starts with ``title_start``."""
    lines = stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(title_start))
    n_vals = len(lines[i + 1].split()) - 1  # header: "schedule 0 1 ... N"
    rows = {}
    for ln in lines[i + 2:]:
        if not ln.strip():
            break
        parts = ln.split()
        rows[" ".join(parts[:-n_vals])] = [float(v) for v in parts[-n_vals:]]
    return rows


@pytest.fixture(scope="module")
def all_schedules(learned_store, tmp_path_factory):
    store, _ = learned_store
    orig = artifacts.baseline_options

    def options(ctx, name):
        return {**orig(ctx, name), **(GITS_TEST_OPTIONS if name == "gits" else {})}

    out = tmp_path_factory.mktemp("plots") / "all.png"
    ctx = make_ctx("schedules", store, [f"schedules.out={out}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifacts, "baseline_options", options)
        res, stdout = _run(ctx)
    return ctx, res, stdout


def test_all_applicable_schedules_in_order(all_schedules, learned_tensors):
    ctx, res, _ = all_schedules
    assert list(res["schedules"]) == ["ld3", "time_uniform", "time_quadratic", "logsnr", "edm", "dmn", "gits"]
    assert set(res["skipped"]) == {"ays", "custom", "time_edm"} and "ays_family" in res["skipped"]["ays"]
    assert torch.allclose(discretize("time_edm", 5, ctx.model.schedule), discretize("edm", 5, ctx.model.schedule),
                          rtol=1e-12)
    sched = ctx.model.schedule
    for name in ("time_uniform", "time_quadratic", "logsnr", "edm", "dmn"):
        sig, ev = res["schedules"][name]
        assert torch.equal(sig, discretize(name, 5, sched)) and torch.equal(ev, sig), name
    sig, ev = res["schedules"]["ld3"]
    assert torch.equal(sig, learned_tensors["sigmas"]) and torch.equal(ev, learned_tensors["sigmas_eval"])
    gits, _ = res["schedules"]["gits"]
    direct = discretize("gits", 5, sched, denoiser=ctx.model, seed=0, **GITS_TEST_OPTIONS)
    assert torch.equal(gits, direct)
    grid = discretize("edm", GITS_TEST_OPTIONS["n_grid"] - 1, sched)  # GITS picks points of its fine grid
    assert all(bool(torch.isclose(grid, v, rtol=1e-12).any()) for v in gits)


def test_printed_tables_match(all_schedules):
    ctx, res, stdout = all_schedules
    sched = ctx.model.schedule
    sig_rows = _table(stdout, "sigma (EDM")
    t_rows = _table(stdout, "native t")
    lam_rows = _table(stdout, "lambda = -log")
    expected_labels = list(res["schedules"])
    if not torch.equal(*res["schedules"]["ld3"]):
        expected_labels.insert(1, "ld3 (eval)")
    assert list(sig_rows) == list(t_rows) == list(lam_rows) == expected_labels
    for name, (sig, _) in res["schedules"].items():
        torch.testing.assert_close(torch.tensor(sig_rows[name], dtype=torch.float64), sig, rtol=1e-4, atol=0)
        torch.testing.assert_close(torch.tensor(t_rows[name], dtype=torch.float64), sched.t(sig), rtol=1e-4, atol=0)
        torch.testing.assert_close(torch.tensor(lam_rows[name], dtype=torch.float64), -torch.log(sig),
                                   rtol=1e-4, atol=1e-9)
    skipped = next(line for line in stdout.splitlines() if line.startswith("skipped: "))
    assert "ays (no AYS list" in skipped and stdout.strip().splitlines()[-1] == f"plot: {res['plot']}"


def test_plot_is_a_png(all_schedules):
    _, res, _ = all_schedules
    with Image.open(res["plot"]) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert sorted(p.name for p in res["plot"].parent.iterdir()) == ["all.png"]  # no temporary left


def test_explicit_list_and_default_plot_path(learned_store):
    store, _ = learned_store
    ctx = make_ctx("schedules", store, ["schedules.include=[logsnr,edm]", "nfe=4"])
    res, stdout = _run(ctx)
    assert list(res["schedules"]) == ["logsnr", "edm"] and res["skipped"] == {}
    assert res["plot"] == store / "plots" / ctx.model_key / "schedules-unipc3-nfe4.png" and res["plot"].is_file()
    assert torch.equal(res["schedules"]["edm"][0], discretize("edm", 4, ctx.model.schedule))
    assert "ld3" not in _table(stdout, "sigma (EDM")


def test_explicit_requests_that_cannot_be_made_fail(learned_store, tmp_path):
    store, _ = learned_store
    with pytest.raises(ConfigError, match="AYS"):  # no AYS list for the mixture model
        _run(make_ctx("schedules", store, ["schedules.include=[ays]", f"schedules.out={tmp_path}/a.png"]))
    with pytest.raises(MissingArtifactError, match="ld3 train nfe=7"):
        _run(make_ctx("schedules", store, ["schedules.include=[ld3,edm]", "nfe=7", f"schedules.out={tmp_path}/b.png"]))
    with pytest.raises(ConfigError, match=r"\.png"):
        _run(make_ctx("schedules", store, [f"schedules.out={tmp_path}/c.jpg"]))
    assert list(tmp_path.iterdir()) == []
