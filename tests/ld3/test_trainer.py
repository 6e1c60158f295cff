"""The LD3 trainer on the embedded mixture: improvement, guarantees, resume, ablations, errors."""
import json

import pytest
import torch

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.errors import ConfigError, NumericalError
from ld3_cli.ld3 import learn_schedule
from ld3_cli.ld3.phases import plan_phases
from ld3_cli.ld3.restarts import RESTART_SEED_STRIDE, restart_seed
from ld3_cli.ld3.trainer import LD3Trainer, TrainOptions
from ld3_cli.models.mnist_gmm import GaussianMixtureDenoiser, load_or_fit
from ld3_cli.schedules import discretize
from ld3_cli.solvers import solve
from ld3_cli.store import Store

FAST = dict(batch_size=10, iters_phase1=15, iters_phase2=15)


@pytest.fixture(scope="module")
def setup(fitted_cache):
    model = GaussianMixtureDenoiser(load_or_fit(128, Store(fitted_cache).fit_cache())).requires_grad_(False)

    def teacher(eps):
        with torch.no_grad():
            return solve("unipc", model, eps * 80, discretize("logsnr", 60, model.schedule), order=3)

    train = noise_for_seeds(range(40), (1, 28, 28))
    held = noise_for_seeds(range(10_000, 10_040), (1, 28, 28))
    return model, train, teacher(train), held, teacher(held)


def heldout_rmse(model, solver, opts, held, y, sig, ev=None):
    with torch.no_grad():
        out = solve(solver, model, held * 80, sig, ev, **opts)
    return float(((out - y) ** 2).mean().sqrt())


@pytest.mark.parametrize("solver,opts,nfe", [("euler", {}, 4), ("unipc", {"order": 3}, 5), ("dpmpp", {"order": 2}, 5)])
def test_learned_schedule_beats_every_baseline_on_heldout_noise(setup, solver, opts, nfe):
    model, x, y, held, y_held = setup
    res = learn_schedule(model, solver, nfe, x, y, solver_options=opts, **FAST)
    with torch.no_grad():
        ours = float(((res.solve(model, held * 80) - y_held) ** 2).mean().sqrt())
    base = {k: heldout_rmse(model, solver, opts, held, y_held, discretize(k, nfe, model.schedule))
            for k in ("time_uniform", "time_quadratic", "logsnr", "edm")}
    assert ours < 0.9 * min(base.values()), (ours, base)
    assert res.best_val <= res.init_val  # never worse than its initialisation on validation
    assert res.baselines[res.init]["train"] == min(v["train"] for v in res.baselines.values())


@pytest.mark.parametrize("learn,stop_at,extra", [
    (("steps", "offsets"), 11, {}),
    (("steps", "offsets", "coefficients"), 40, {"coefficients_optimizer": "rmsprop", "lr_coefficients": 0.01}),
    (("steps", "offsets", "coefficients"), 40, {"coefficients_optimizer": "adam", "coefficient_decay": 0.02}),
    (("steps", "offsets", "coefficients"), 40, {"schedule_rates_coefficients": "carry"}),
    (("steps", "offsets"), 22, {"steps_rates_offsets": "carry", "patience": 2}),
    (("steps", "offsets"), 22, {"steps_rates_offsets": "averages", "patience": 2}),
    (("steps", "offsets", "coefficients"), 40, {"coefficient_constraint": "last", "decouple_first": True}),
    (("steps", "offsets", "coefficients", "residual"), 60, {"iters_residual": 20, "val_every_residual": 5,
                                                            "batch_size_residual": 10, "residual_joint": 0.0}),
    (("steps", "offsets", "coefficients", "residual"), 60, {"iters_residual": 20, "val_every_residual": 5,
                                                            "batch_size_residual": 10, "residual_joint": 0.5})])
def test_resume_gives_the_same_schedule_as_an_uninterrupted_run(setup, learn, stop_at, extra):
    """Interrupted mid phase 1 (LD3), mid phase 2 (with phase 1's optimiser carried), mid phase 3 (the
    coefficients and their optimiser's state) or mid phase 4 (the residual operator), the resumed run takes the
    uninterrupted one's path step by step and ends where it does."""
    model, x, y, held, _ = setup
    opts = TrainOptions(**FAST, seed=3, learn=learn, iters_phase3=20, **extra)
    full = LD3Trainer(model, "unipc", {"order": 3}, 5, x, y, None, opts).run()
    first = LD3Trainer(model, "unipc", {"order": 3}, 5, x, y, None, opts)
    saved = {}

    class Stop(Exception):
        pass

    def checkpoint(tr):
        if tr.state.iteration == stop_at:  # interrupt mid phase (state is saved at a validation)
            tensors, info = tr.dump_state()
            saved["t"] = {k: v.clone() for k, v in tensors.items()}
            saved["i"] = json.loads(json.dumps(info))
            raise Stop

    with pytest.raises(Stop):
        first.run(checkpoint=checkpoint)
    resumed = LD3Trainer(model, "unipc", {"order": 3}, 5, x, y, None, opts)
    resumed.load_state(saved["t"], saved["i"])
    res = resumed.run()
    assert torch.equal(res.sigmas, full.sigmas) and torch.equal(res.sigmas_eval, full.sigmas_eval)
    assert res.best_val == full.best_val and res.iterations == full.iterations
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history]  # the same path, step by step
    assert [h.get("val") for h in res.history] == [h.get("val") for h in full.history]  # and the same validations
    if "coefficients" in learn:
        stopped = resumed.phases[saved["i"]["phase_index"]]
        assert stopped.coefficients and stopped.residual == ("residual" in learn)  # inside phase 3, or 4
        with torch.no_grad():
            assert torch.equal(res.solve(model, held[:4] * 80), full.solve(model, held[:4] * 80))


def test_same_seed_same_schedule(setup):
    model, x, y, _, _ = setup
    a = learn_schedule(model, "euler", 4, x, y, seed=7, **FAST)
    b = learn_schedule(model, "euler", 4, x, y, seed=7, **FAST)
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.sigmas_eval, b.sigmas_eval)


def test_ablations(setup):
    model, x, y, _, _ = setup
    hard = LD3Trainer(model, "euler", {}, 4, x, y, None, TrainOptions(**FAST, r=0))
    hard.run()
    assert torch.equal(hard.state.train_noises, hard.train_pairs.eps)  # r = 0: the noises never move
    assert all(rec["accepted"] == 0 for rec in hard.state.history)
    soft = LD3Trainer(model, "euler", {}, 4, x, y, None, TrainOptions(**FAST))
    soft.run()
    moved = (soft.state.train_noises - soft.train_pairs.eps).flatten(1).norm(dim=1)
    assert float(moved.max()) > 0 and bool(torch.all(moved <= soft.radius * (1 + 1e-5)))
    no_phase2 = learn_schedule(model, "euler", 4, x, y, learn=["steps"], **FAST)
    assert torch.equal(no_phase2.sigmas, no_phase2.sigmas_eval)
    in_time = learn_schedule(model, "euler", 4, x, y, param="time", **FAST)
    assert in_time.param == "time" and bool(torch.all(in_time.sigmas[1:] < in_time.sigmas[:-1]))
    assert in_time.best_val <= in_time.init_val


def test_numerical_fault_stops_with_a_clear_error(setup):
    model, x, y, _, _ = setup

    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.schedule, self.shape, self.calls = model, model.schedule, model.shape, 0

        def forward(self, x_, sigma, cond=None):
            self.calls += 1
            out = self.inner(x_, sigma, cond)
            return out * float("nan") if self.calls > 200 else out

        def decode(self, x_):
            return x_

    tr = LD3Trainer(Poisoned(), "euler", {}, 4, x, y, None, TrainOptions(**FAST))
    with pytest.raises(NumericalError, match="best schedule so far"):
        tr.run()
    sig, _ = tr.best_values()
    assert bool(torch.isfinite(sig).all()) and bool(torch.all(sig[1:] < sig[:-1]))


def test_option_errors(setup):
    model, x, y, _, _ = setup
    with pytest.raises(ConfigError, match="unknown train option"):
        learn_schedule(model, "euler", 4, x, y, learning_rate=1)
    with pytest.raises(ConfigError, match="at least one training and one validation"):
        learn_schedule(model, "euler", 4, x[:1], y[:1])
    with pytest.raises(ConfigError, match="odd NFE"):
        learn_schedule(model, "heun", 4, x, y)


def test_learned_coefficients_lower_the_validation_loss_below_ld3(setup):
    """One run: LD3's two phases, then the coefficients; the coefficient phase must beat LD3's validation loss
    (recorded when phase 2 ended), and the learned sampler carries its table."""
    model, x, y, held, y_held = setup
    res = learn_schedule(model, "unipc", 5, x, y, solver_options={"order": 3},
                         learn=["steps", "offsets", "coefficients"], **FAST, iters_phase3=30)
    ld3_val = res.after_phase["offsets"]
    assert res.best_phase == "coefficients" and res.best_val < 0.9 * ld3_val, (res.best_val, ld3_val)
    # LD3's phases validate every iteration (as `ld3 train`), the coefficient phase every 5th (its default)
    validated = {ph: [h["iteration"] for h in res.history if h["phase"] == ph and "val" in h]
                 for ph in ("steps", "offsets", "coefficients")}
    assert validated["steps"] == list(range(1, 16)) and validated["offsets"] == list(range(16, 31))
    assert validated["coefficients"] == list(range(35, 61, 5))
    table = res.sampler.coefficients
    assert table is not None and table.steps == 5 and float(table.pred.abs().sum()) > 0
    with torch.no_grad():  # the phase-2 sampler is the LD3 schedule of the same run, without coefficients
        ld3 = res.phase_samplers["offsets"]
        assert ld3.coefficients is None and not torch.equal(ld3.solve(model, held * 80), res.solve(model, held * 80))


@pytest.mark.parametrize("solver,opts,learn", [
    ("euler", {}, ["steps", "offsets"]), ("heun", {}, ["steps", "offsets"]), ("deis", {"order": 3}, None),
    ("dpmpp", {"order": 3}, None), ("unipc", {"order": 3}, None), ("ipndm", {"order": 3}, None)])
def test_nfe_3_trains_for_every_solver(setup, solver, opts, learn):
    """NFE 3: every solver that allows it learns a 3-NFE schedule (the multistep ones their coefficients too)."""
    model, x, y, held, y_held = setup
    learn = learn or ["steps", "offsets", "coefficients"]
    res = learn_schedule(model, solver, 3, x, y, solver_options=opts, learn=learn, batch_size=10, iters_phase1=3,
                         iters_phase2=3, iters_phase3=3)
    assert res.nfe == 3 and res.best_val <= res.init_val
    with torch.no_grad():
        out = res.solve(model, held[:4] * 80)
    assert bool(torch.isfinite(out).all())


def test_ld3_part_of_a_learned_solver_run_is_exactly_an_ld3_run(setup):
    """The phase-2 state of a run that also learns coefficients is bit-identical to an LD3-only run with the same
    options: the learned solver is compared with exactly the LD3 that `ld3 train` gives on the same pairs."""
    model, x, y, _, _ = setup
    kw = dict(solver_options={"order": 2}, **FAST)
    ld3 = learn_schedule(model, "dpmpp", 4, x, y, learn=["steps", "offsets"], **kw)
    full = learn_schedule(model, "dpmpp", 4, x, y, learn=["steps", "offsets", "coefficients"], iters_phase3=5, **kw)
    part = full.phase_samplers["offsets"]
    assert torch.equal(part.sigmas, ld3.sampler.sigmas) and full.after_phase["offsets"] == ld3.best_val
    # both learned the decoupled offsets, so both evaluate the network off their step grid
    assert ld3.sampler.sigmas_eval is not None and part.sigmas_eval is not None
    assert torch.equal(part.sigmas_eval, ld3.sampler.sigmas_eval)


def test_coefficient_phase_trains_on_its_own_batch_size(setup):
    """``batch_size_coefficients`` sets the training batch of the coefficient phase only: the denoiser sees
    batches of ``batch_size`` in LD3's phases and of ``batch_size_coefficients`` once the coefficients train
    (scoring and validation run whole splits: 20 of the 40 pairs each)."""
    model, x, y, _, _ = setup
    seen: dict[str, set] = {}

    class Counting(torch.nn.Module):
        schedule, decode = model.schedule, model.decode

        def forward(self, xt, sigma, cond=None):
            name = trainer.phases[min(trainer.state.phase_index, len(trainer.phases) - 1)].name
            seen.setdefault(name, set()).add(xt.shape[0])
            return model(xt, sigma, cond)

    opts = TrainOptions(batch_size=4, batch_size_coefficients=8, iters_phase1=3, iters_phase2=3, iters_phase3=6,
                        learn=("steps", "offsets", "coefficients"))
    trainer = LD3Trainer(Counting(), "dpmpp", {"order": 2}, 4, x, y, options=opts)
    trainer.run()
    assert seen == {"steps": {4, 20}, "offsets": {4, 20}, "coefficients": {8, 20}}, seen


def _phase_changes(setup, **extra):
    """A short learned-solver run with early decays (patience 1): the options, the records, and for each phase
    change the optimisers' rates and the time steps' optimiser just before it (the ended phase's) and just after it
    (the starting phase's)."""
    model, x, y, _, _ = setup
    opts = TrainOptions(batch_size=4, batch_size_coefficients=8, iters_phase1=6, iters_phase2=6, iters_phase3=5,
                        patience=1, lr_decay=0.5, learn=("steps", "offsets", "coefficients"), **extra)
    trainer = LD3Trainer(model, "dpmpp", {"order": 2}, 4, x, y, options=opts)
    changes, records, next_phase = [], [], trainer._next_phase

    def rates():
        return {**{k: o.lr for k, o in trainer.optimizers.items()}, "optimizer": trainer.optimizers["steps"]}

    def watched():
        before = rates()
        next_phase()
        changes.append((before, rates()))

    trainer._next_phase, trainer.progress = watched, records.append
    trainer.run()
    return opts, changes, records


def test_phase2_steps_rates_reset_or_carry(setup):
    """``steps_rates_offsets``: reset starts phase 2's time steps with a fresh optimiser at lr; carry goes on with
    phase 1's (the decayed rate it ended with, and its running averages), as the paper's code does; averages goes
    on with phase 1's running averages at the fresh rate lr.  The offsets start at their own rate each time."""
    opts, changes, _ = _phase_changes(setup)
    end, first = changes[0]
    assert end["steps"] < opts.lr  # patience 1 decayed it in phase 1
    assert (first["steps"], first["offsets"]) == (opts.lr, opts.lr_offsets)
    assert first["optimizer"] is not end["optimizer"]
    opts, changes, records = _phase_changes(setup, steps_rates_offsets="carry")
    end, first = changes[0]
    assert first["steps"] == end["steps"] < opts.lr and first["optimizer"] is end["optimizer"]
    assert first["offsets"] == opts.lr_offsets
    assert sum(r["phase"] == "offsets" for r in records) == opts.iters_phase2
    # phase 3 starts afresh all the same (its own option, reset by default)
    assert changes[1][1]["steps"] == opts.lr and changes[1][1]["optimizer"] is not changes[1][0]["optimizer"]
    opts, changes, _ = _phase_changes(setup, steps_rates_offsets="averages")  # phase 1's averages, a fresh rate
    end, first = changes[0]
    assert end["steps"] < opts.lr == first["steps"] and first["optimizer"] is end["optimizer"]
    assert torch.count_nonzero(first["optimizer"].state["square_avg"]) > 0


def test_phase3_schedule_rates_reset_or_carry(setup):
    """``schedule_rates_coefficients``: reset starts phase 3's time steps and offsets with fresh optimisers at
    lr / lr_offsets; carry goes on with LD3's optimisers of them (the decayed rates they ended with, and their
    running averages); averages with LD3's optimisers at the fresh rates.  The coefficients start at their own rate
    each time, and the phase runs its budget."""
    opts, changes, records = _phase_changes(setup)
    end, first = changes[1]
    assert end["steps"] < opts.lr and end["offsets"] < opts.lr_offsets  # patience 1 decayed them
    assert (first["steps"], first["offsets"], first["coefficients.0"]) == (opts.lr, opts.lr_offsets,
                                                                           opts.lr_coefficients)
    assert first["optimizer"] is not end["optimizer"]
    opts, changes, records = _phase_changes(setup, schedule_rates_coefficients="carry")
    end, first = changes[1]
    assert (first["steps"], first["offsets"]) == (end["steps"], end["offsets"])
    assert first["optimizer"] is end["optimizer"] and first["coefficients.0"] == opts.lr_coefficients
    assert sum(r["phase"] == "coefficients" for r in records) == opts.iters_phase3
    opts, changes, _ = _phase_changes(setup, schedule_rates_coefficients="averages")  # LD3's averages, fresh rates
    end, first = changes[1]
    assert (first["steps"], first["offsets"]) == (opts.lr, opts.lr_offsets) and first["optimizer"] is end["optimizer"]


@pytest.mark.parametrize("solver,opts,differs", [("unipc", {"order": 3}, True), ("dpmpp", {"order": 3}, False)])
def test_rho_gradient_reaches_the_first_step_of_unipc_only(setup, solver, opts, differs):
    """``rho_gradient=stopped`` changes the time steps' gradient of a UniPC run (and nothing of other solvers);
    the loss of the step is the same."""
    model, x, y, _, _ = setup
    seen = {}
    for mode in ("full", "stopped"):
        trainer = LD3Trainer(model, solver, opts, 5, x, y, options=TrainOptions(**FAST, rho_gradient=mode, r=0))
        trainer.start()
        rec = trainer._step(torch.arange(10), trainer.phases[0])
        seen[mode] = rec["loss"], trainer.state.params["steps"].grad.clone()
    assert seen["full"][0] == seen["stopped"][0]
    assert torch.equal(seen["full"][1], seen["stopped"][1]) != differs


def test_decouple_first_learns_the_first_evaluation_time(setup):
    """`decouple_first`: the first evaluation's noise level is learned (the noise is still drawn at sigma_max), and
    on held-out noises the run is better than with that evaluation fixed; with the analytic first step (that point
    is not evaluated) it changes nothing."""
    model, x, y, held, y_held = setup
    runs = {f: learn_schedule(model, "euler", 3, x, y, decouple_first=f, **FAST) for f in (False, True)}
    for f, res in runs.items():
        assert float(res.sigmas[0]) == 80.0
        assert (float(res.sigmas_eval[0]) < 80.0 * (1 - 1e-3)) if f else float(res.sigmas_eval[0]) == 80.0
    rmse = {f: heldout_rmse(model, "euler", {}, held, y_held, r.sigmas, r.sigmas_eval) for f, r in runs.items()}
    assert rmse[True] < rmse[False], rmse
    afs = {f: learn_schedule(model, "euler", 3, x, y, decouple_first=f, solver_options={"analytic_first": True},
                             **FAST) for f in (False, True)}
    assert torch.equal(afs[True].sigmas, afs[False].sigmas)
    assert torch.equal(afs[True].sigmas_eval[1:], afs[False].sigmas_eval[1:])


def test_restarts_keep_the_run_with_the_best_validation_each_exactly_a_plain_run(setup):
    """``restarts=3``: restart k is the plain run seeded ``restart_seed(seed, k)`` (restart 0 the plain run itself),
    and the result is the restart with the lowest validation loss, bit for bit."""
    model, x, y, _, _ = setup
    kw = dict(solver_options={"order": 2}, seed=5, **FAST)
    res = learn_schedule(model, "dpmpp", 4, x, y, restarts=3, **kw)
    plain = [learn_schedule(model, "dpmpp", 4, x, y, **{**kw, "seed": restart_seed(5, k)}) for k in range(3)]
    assert plain[0].restarts == [] and [r["seed"] for r in res.restarts] == [5, 5 + RESTART_SEED_STRIDE,
                                                                             5 + 2 * RESTART_SEED_STRIDE]
    vals = [p.best_val for p in plain]
    assert [r["best_val"] for r in res.restarts] == vals and len(set(vals)) == 3  # the batch orders differ
    kept = vals.index(min(vals))
    assert [r["kept"] for r in res.restarts] == [k == kept for k in range(3)]
    assert [r["iterations"] for r in res.restarts] == [p.iterations for p in plain]
    assert torch.equal(res.sigmas, plain[kept].sigmas) and torch.equal(res.sigmas_eval, plain[kept].sigmas_eval)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (res, plain[kept])]
    assert res.best_val == min(vals) and untimed[0] == untimed[1]  # the kept run's path, step by step


def test_restarts_of_a_learned_solver_repeat_ld3_phases_and_run_phase_3_once(setup):
    """With learned coefficients only LD3's phases restart: phase 3 runs once, from the kept restart, exactly as the
    plain run of that seed runs it; the progress total counts LD3's phases per restart."""
    model, x, y, held, _ = setup
    kw = dict(solver_options={"order": 3}, learn=["steps", "offsets", "coefficients"], iters_phase3=10,
              batch_size_coefficients=20, val_every_coefficients=2, seed=1, **FAST)
    res = learn_schedule(model, "ipndm", 4, x, y, restarts=2, **kw)
    kept = next(r for r in res.restarts if r["kept"])
    plain = learn_schedule(model, "ipndm", 4, x, y, **{**kw, "seed": kept["seed"]})
    assert sum(h["phase"] == "coefficients" for h in res.history) == 10
    assert res.iterations == plain.iterations == kept["iterations"] + 10
    with torch.no_grad():
        assert torch.equal(res.solve(model, held[:4] * 80), plain.solve(model, held[:4] * 80))
    alone = learn_schedule(model, "ipndm", 4, x, y, restarts=2, **{**kw, "learn": ["coefficients"]})
    assert alone.restarts == [] and alone.iterations == 10  # no LD3 phase to restart: one run
    opts = TrainOptions(**FAST, learn=("steps", "offsets", "coefficients"), iters_phase3=10, restarts=2)
    assert opts.total_iterations() == 2 * 30 + 10 and opts.total_iterations(restarts=1) == 30 + 10


def test_the_residual_operator_lowers_the_validation_loss_below_the_learned_coefficients(setup):
    """Phase 4 with ``residual_joint = 0`` trains the residual operator alone, from the learned solver + steps: its
    validation must beat phase 3's, the time steps and coefficients stay as phase 3 left them, and the sampler
    carries the operator."""
    model, x, y, held, y_held = setup
    res = learn_schedule(model, "ipndm", 4, x, y, solver_options={"order": 3}, seed=2, residual_joint=0.0,
                         learn=["steps", "offsets", "coefficients", "residual"], **FAST, iters_phase3=30,
                         iters_residual=60, batch_size_residual=10, val_every_residual=5)
    coef_val, coef = res.after_phase["coefficients"], res.phase_samplers["coefficients"]
    assert res.best_phase == "residual" and res.best_val < 0.9 * coef_val, (res.best_val, coef_val)
    assert [h["iteration"] for h in res.history if h["phase"] == "residual" and "val" in h] == list(range(65, 121, 5))
    assert torch.equal(res.sigmas, coef.sigmas) and torch.equal(res.sampler.coefficients.pred, coef.coefficients.pred)
    assert coef.residual is None and res.sampler.residual is not None and res.sampler.residual.magnitude() > 0
    with torch.no_grad():
        err = {k: float(((s.solve(model, held * 80) - y_held) ** 2).mean().sqrt())
               for k, s in (("coefficients", coef), ("residual", res.sampler))}
    assert err["residual"] < err["coefficients"], err


def test_loss_residual_trains_phase_4_on_its_own_loss_and_keeps_what_train_loss_validates(setup):
    """``loss_residual = pseudo_huber``: phase 4's training losses are pseudo-Huber (about the error's norm, 28x the
    RMSE on 28x28 images, where L2 is the squared RMSE), phases 1-3 stay on L2, and what is kept is judged on L2:
    the best validation loss is the L2 of the kept sampler on the validation pairs."""
    model, x, y, _, _ = setup
    res = learn_schedule(model, "ipndm", 4, x, y, solver_options={"order": 3}, seed=2, loss="l2",
                         loss_residual="pseudo_huber", learn=["steps", "offsets", "coefficients", "residual"], **FAST,
                         iters_phase3=30, iters_residual=60, batch_size_residual=10, val_every_residual=5)
    train_losses = {p: [h["loss"] for h in res.history if h["phase"] == p and "loss" in h]
                    for p in ("coefficients", "residual")}
    assert len(train_losses["residual"]) == 60
    assert min(train_losses["residual"]) > 10 * max(train_losses["coefficients"]), train_losses
    assert res.best_phase == "residual" and res.best_val < res.after_phase["coefficients"]
    with torch.no_grad():
        val_l2 = float(((res.sampler.solve(model, x[20:] * 80) - y[20:]) ** 2).mean())
    assert val_l2 == pytest.approx(res.best_val, rel=1e-5)


def test_residual_decay_pulls_the_residual_weights_towards_zero(setup):
    """``residual_decay = d``: phase 4's Adam shrinks every residual weight by ``1 - d`` after its step (the
    decoupled decay the coefficients' Adam has), so with a rate too small to move them the hidden weights after ``k``
    steps are ``(1 - d)^k`` times their start, and the last layers stay near zero."""
    model, x, y, _, _ = setup
    opts = TrainOptions(**FAST, learn=("steps", "offsets", "coefficients", "residual"), residual_decay=0.1,
                        lr_residual=1e-12)
    trainer = LD3Trainer(model, "ipndm", {"order": 3, "analytic_first": True}, 4, x, y, None, opts)
    trainer.start()
    names = [k for k in trainer.state.params if k.startswith("residual.")]
    start = {k: trainer.state.params[k].detach().clone() for k in names}
    optimizers = [trainer._new_optimizer(k, trainer.state.params[k]) for k in names]
    for _ in range(3):
        for k, opt in zip(names, optimizers):
            trainer.state.params[k].grad = torch.ones_like(trainer.state.params[k])
            opt.step()
    for k in names:
        assert torch.allclose(trainer.state.params[k], start[k] * 0.9 ** 3, atol=1e-10), k
    assert trainer.residual.magnitude() < 1e-10 and any(float(v.abs().max()) > 0 for v in start.values())


def test_residual_steps_gives_networks_to_the_last_steps_only(setup):
    """``residual_steps = 2``: the operator has networks for the last two steps of the table (the analytic first
    step's table has NFE + 1 steps), and those are the only residual tensors the trainer learns."""
    model, x, y, _, _ = setup
    opts = TrainOptions(**FAST, learn=("steps", "offsets", "coefficients", "residual"), residual_steps=2)
    trainer = LD3Trainer(model, "ipndm", {"order": 3, "analytic_first": True}, 4, x, y, None, opts)
    trainer.start()
    assert trainer.residual.steps == 5 and list(trainer.residual.covered()) == [3, 4]
    assert len([k for k in trainer.state.params if k.startswith("residual.")]) == 2 * 6


def test_a_joint_phase_4_moves_the_steps_and_coefficients_with_the_residual_at_scaled_rates(setup):
    """``residual_joint = f``: phase 4 moves the time steps, offsets and coefficients with the residual, starting
    them at their options' rates times ``f`` (the residual at ``lr_residual``, the phase's lead); its validation
    beats phase 3's, what it keeps differs from phase 3 in every learned group, and the kept sampler scores the
    best validation loss on the validation pairs.  At ``f = 0`` phase 4 moves the residual alone."""
    model, x, y, _, _ = setup
    learn = ("steps", "offsets", "coefficients", "residual")
    assert plan_phases(TrainOptions(learn=learn, residual_joint=0))[-1].groups == ("residual",)
    assert plan_phases(TrainOptions(learn=learn, residual_joint=0.2))[-1].groups == ("residual", "coefficients",
                                                                                     "steps", "offsets")
    opts = TrainOptions(**FAST, learn=learn, residual_joint=0.2, iters_phase3=30)
    trainer = LD3Trainer(model, "ipndm", {"order": 3}, 4, x, y, None, opts)
    trainer.start()
    trainer.state.phase_index = 2  # as if phase 3 had just ended
    trainer._next_phase()
    phase = trainer.phases[trainer.state.phase_index]
    rates = {name.split(".")[0]: trainer.optimizers[name].lr for name in trainer._active(phase)}
    assert rates == pytest.approx({"residual": opts.lr_residual, "coefficients": 0.2 * opts.lr_coefficients,
                                   "steps": 0.2 * opts.lr, "offsets": 0.2 * opts.lr_offsets}), rates
    assert trainer._lead(phase) is trainer.optimizers[next(n for n in trainer.optimizers if n.startswith("residual"))]
    res = learn_schedule(model, "ipndm", 4, x, y, solver_options={"order": 3}, seed=2, learn=learn, **FAST,
                         residual_joint=0.2, iters_phase3=30, iters_residual=60, batch_size_residual=10,
                         val_every_residual=5)
    coef = res.phase_samplers["coefficients"]
    assert res.best_phase == "residual" and res.best_val < 0.9 * res.after_phase["coefficients"]
    assert not torch.equal(res.sigmas, coef.sigmas) and not torch.equal(res.sigmas_eval, coef.sigmas_eval)
    assert not torch.equal(res.sampler.coefficients.pred, coef.coefficients.pred)
    with torch.no_grad():
        val_l2 = float(((res.sampler.solve(model, x[20:] * 80) - y[20:]) ** 2).mean())
    assert val_l2 == pytest.approx(res.best_val, rel=1e-5)
