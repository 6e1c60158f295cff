"""The torch-only runtime that `ld3 export` ships (ld3_cli/export/runtime/): it equals ld3's own solvers bit for bit,
one network evaluation at a time, for every solver and for what LD3 and the learned solver add (decoupled times and
scales, learned coefficient tables); the stock-sampler solvers equal k-diffusion's own functions; the files import
nothing of ld3."""
from __future__ import annotations

import ast
import dataclasses

import pytest
import torch
from ld3_test_helpers import CountingDenoiser as Smooth

from ld3_cli.export import ExportSchedule
from ld3_cli.export.runtime import FILES, ld3_kdiffusion, ld3_sampler, runtime_source
from ld3_cli.schedules import discretize
from ld3_cli.schedules.noise import EDM
from ld3_cli.solvers import get_solver
from ld3_cli.solvers.residual import ResidualOperator
from ld3_cli.solvers.sampler import Sampler

CASES = [("unipc", {"order": 3}), ("unipc", {"order": 2, "variant": "bh1"}), ("dpmpp", {"order": 3}),
         ("dpmpp", {"order": 2}), ("ipndm", {"order": 3}), ("deis", {"order": 3}), ("euler", {}), ("heun", {}),
         ("k_euler", {}), ("k_dpmpp_2m", {}), ("k_heun", {}), ("unipc", {"order": 3, "analytic_first": True}),
         ("ipndm", {"order": 3, "analytic_first": True}), ("dpmpp", {"order": 2, "analytic_first": True})]


def _sampler(solver, opts, decoupled: bool, learned: bool, schedule=EDM(), nfe=5, seed=0, residual: bool = False):
    """A sampler like LD3's (perturbed evaluation times and scales) and the learned solver's (a perturbed full
    table; ``residual``: with a residual operator whose every weight is drawn), on the edm baseline grid for
    ``nfe``."""
    g = torch.Generator().manual_seed(seed)
    steps = get_solver(solver).steps_for(nfe, opts)
    sig = discretize("edm", steps, schedule)
    ev = scales = None
    if decoupled:
        ev = sig * (1 + 0.05 * torch.randn(steps + 1, generator=g, dtype=torch.float64))
        ev[-1] = sig[-1]
        scales = 1 + 0.02 * torch.randn(steps + 1, generator=g, dtype=torch.float64)
    s = Sampler(solver, sig, dict(opts), ev, scales, "eval" if learned else "step")
    if learned:
        t = s.base_table().widen(steps).full()
        noise = 0.01 * torch.randn(t.pred.shape, generator=g, dtype=torch.float64)
        corr = None if t.corr is None else t.corr + 0.01 * torch.randn(t.corr.shape, generator=g, dtype=torch.float64)
        s.coefficients = dataclasses.replace(t, pred=t.pred + noise, corr=corr)
    if residual:
        s.coefficients = s.table()
        s.residual = ResidualOperator(s.coefficients.steps, 1, s.coefficients.history, 3, g, first=int(decoupled))
        with torch.no_grad():
            for w in s.residual.weights:
                w.copy_(0.05 * torch.randn(w.shape, generator=g))
    return s


def _record(s: Sampler, schedule=EDM()) -> dict:
    return ExportSchedule("ld3", s.sigmas, s.evaluation_sigmas, schedule, s.solver, s.options, 5, "m", "m-0",
                          eval_scales=s.eval_scales, noise_estimate=s.noise_estimate, coefficients=s.table(),
                          learned_coefficients=s.coefficients is not None, residual=s.residual).record()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("solver,opts", CASES, ids=[s + "-" + "-".join(k if v is True else str(v) for k, v in o.items())
                                                    for s, o in CASES])
def test_the_runtime_equals_ld3_bit_for_bit(solver, opts, dtype):
    net = Smooth()
    variants = [(False, False, False)]
    if not get_solver(solver).evaluates_on_grid:
        variants.append((True, False, False))                        # LD3: decoupled times and scales
        if solver not in ("heun", "euler"):
            variants.append((True, True, False))                     # the learned solver
            variants.append((True, True, True))                      # ... with a residual from step 1
    elif solver != "k_heun":
        variants.append((False, False, True))                        # a stock table (onto 0) with a residual
    for decoupled, learned, residual in variants:
        s = _sampler(solver, opts, decoupled, learned, residual=residual)
        record = _record(s)
        x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype) * float(s.sigmas[0])
        net.calls = 0
        ours = s.solve(net, x)
        nfe = net.calls
        net.calls = 0
        theirs = ld3_sampler.sample(net, x, record)
        assert net.calls == nfe == len(ld3_sampler.evaluation_points(record))
        assert nfe == get_solver(solver).evaluations(s.steps, opts) == 5
        assert torch.equal(ours, theirs), (solver, decoupled, learned, residual)
        assert record["version"] == (5 if residual else 4)
        # k-diffusion's calling convention: model(x, sigma * s_in, **extra_args), float32 grid accepted
        kd = ld3_kdiffusion.make_sampler(record)
        got = kd(lambda z, sigma, scale: net(z, sigma) * scale, x, torch.tensor(record["sigmas"]).float(),
                 extra_args={"scale": 1.0}, disable=True)
        assert torch.equal(got, ours)


def test_the_step_by_step_run_and_its_callbacks():
    s = _sampler("unipc", {"order": 3}, True, True)
    record = _record(s)
    net = Smooth()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    seen, theirs = [], []
    s.solve(net, x, callback=lambda i, xi, d: seen.append((i, xi.clone())))
    run = ld3_sampler.LD3Run(record, x)
    while not run.done:
        i = run.grid_index
        x_in, sigma = run.network_input()
        assert torch.equal(sigma, torch.full((2,), record["sigmas_eval"][i], dtype=torch.float64))
        run.advance(net(x_in, sigma), lambda i, xi, d: theirs.append((i, xi.clone())))
    assert [i for i, _ in seen] == [i for i, _ in theirs] == list(range(5))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen, theirs))
    with pytest.raises(RuntimeError, match="finished"):
        run.network_input()


def test_the_analytic_first_step_runs_from_the_first_evaluation_and_reports_every_grid_point():
    """The first evaluation is at grid point 1, at start_factor x the start; the callback still sees grid point 0."""
    s = _sampler("ipndm", {"order": 3, "analytic_first": True}, True, True)
    record = _record(s)
    assert record["analytic_first"] and ld3_sampler.evaluation_points(record) == [1, 2, 3, 4, 5]
    net = Smooth()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    seen, theirs = [], []
    s.solve(net, x, callback=lambda i, xi, d: seen.append((i, xi.clone(), d.clone())))
    run = ld3_sampler.LD3Run(record, x)
    assert run.grid_index == 1
    assert torch.allclose(run.current_point, ld3_sampler.start_factor(record) * x, rtol=1e-14, atol=0)
    while not run.done:
        x_in, sigma = run.network_input()
        run.advance(net(x_in, sigma), lambda i, xi, d: theirs.append((i, xi.clone(), d.clone())))
    assert [i for i, *_ in seen] == [i for i, *_ in theirs] == list(range(6)) and run.calls == 5
    assert all(torch.equal(a, b) and torch.equal(c, d) for (_, a, c), (_, b, d) in zip(seen, theirs))
    assert torch.equal(run.result, s.solve(net, x))


def test_the_kdiffusion_signature_refuses_another_grid_and_reports_steps():
    s = _sampler("dpmpp", {"order": 2}, True, False)
    record = _record(s)
    kd = ld3_kdiffusion.make_sampler(record)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64) * 80
    with pytest.raises(ValueError, match="its own grid of 6 sigmas.*Pass SIGMAS"):
        kd(lambda z, sigma: z, x, torch.linspace(80, 0.002, 6))
    with pytest.raises(ValueError, match="given 7 values"):
        kd(lambda z, sigma: z, x, torch.tensor(record["sigmas"] + [0.0]))
    # a stock-sampler schedule also takes its own stock list (ending with 0); ld3's own solvers do not
    stock = _record(_sampler("k_dpmpp_2m", {}, False, False))
    run = ld3_kdiffusion.make_sampler(stock)
    assert torch.equal(run(lambda z, sigma: 0.5 * z, x, stock["stock_sigmas"]),
                       run(lambda z, sigma: 0.5 * z, x, stock["sigmas"]))
    steps = []
    kd(lambda z, sigma: 0.5 * z, x, record["sigmas"], callback=steps.append, disable=True)
    assert [d["i"] for d in steps] == list(range(5)) and set(steps[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(steps[2]["sigma"]) == record["sigmas"][2]


def test_records_it_cannot_run_are_refused():
    with pytest.raises(ValueError, match="not an ld3 schedule export"):
        ld3_sampler.LD3Run({"sigmas": [1.0, 0.5]}, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="has no coefficient table"):
        ld3_sampler.check_record({"format": "ld3-schedule", "sigmas": [2.0, 1.0], "sigmas_eval": [2.0, 1.0],
                                  "solver": "dpmpp", "coefficients": None})
    from ld3_cli.export.record import RESIDUAL_RECORD_VERSION

    assert ld3_sampler.VERSION == RESIDUAL_RECORD_VERSION  # the runner shipped runs the newest the writer writes
    with pytest.raises(ValueError, match="version-6 ld3 export; this ld3_sampler.py runs versions up to 5"):
        ld3_sampler.check_record({"format": "ld3-schedule", "version": 6, "sigmas": [2.0, 1.0]})
    with pytest.raises(ValueError, match="residual operator needs a multistep table"):
        ld3_sampler.check_record({"format": "ld3-schedule", "sigmas": [2.0, 1.0], "sigmas_eval": [2.0, 1.0],
                                  "solver": "heun", "coefficients": None, "residual": {"history": 1}})
    table = {"a": [1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="has 1 steps' weights, its table 3 steps from step 1; re-export it"):
        ld3_sampler.check_record({"format": "ld3-schedule", "sigmas": [2.0, 1.0], "sigmas_eval": [2.0, 1.0],
                                  "solver": "ipndm", "coefficients": table,
                                  "residual": {"history": 1, "first": 1, "weights": [{}]}})
    with pytest.raises(ValueError, match="analytic first step needs a multistep table"):
        ld3_sampler.check_record({"format": "ld3-schedule", "sigmas": [2.0, 1.0], "sigmas_eval": [2.0, 1.0],
                                  "solver": "heun", "coefficients": None, "analytic_first": True})
    with pytest.raises(FileNotFoundError, match="no ld3 export"):
        ld3_sampler.load_schedule("/nonexistent/folder")


@pytest.mark.parametrize("name", FILES)
def test_the_runtime_files_import_nothing_of_ld3(name):
    """What `ld3 export` ships runs where ld3 is not installed: torch (and the library it plugs into) only."""
    tree = ast.parse(runtime_source(name))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.level == 0}
    assert imported <= {"__future__", "json", "logging", "math", "pathlib", "typing", "torch", "importlib", "sys",
                        "tqdm", "diffusers", "comfy", "ld3_sampler"}, imported
