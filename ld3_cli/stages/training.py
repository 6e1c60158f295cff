"""Learning the LD3 schedule for the current solver and NFE, in the store (``ld3 train``, ``ld3 run``).

Reads the teacher pairs from the store (``ld3 teacher-sample`` makes them), trains with
:class:`~ld3_cli.ld3.trainer.LD3Trainer`, saving its state to ``<key>.partial/state.safetensors``
(:class:`~ld3_cli.ld3.checkpoint.TrainStateFile`: at most every few seconds, and on Ctrl-C / SIGTERM /
any failure), so rerunning the same command resumes exactly where it stopped, mid-epoch included.  With
``train.restarts = K > 1`` (:mod:`ld3_cli.ld3.restarts`) restart ``k > 0`` keeps its own
``state-restart<k>.safetensors``.
Only states taken between iterations are saved (an interrupt mid-iteration saves the state before
that iteration).  The artifact holds

    tensors.safetensors  sigmas, sigmas_eval, t, t_eval (native time), lambdas, lambdas_eval; eval_scales
                         (decoupled state scales) and coef.a / coef.b / coef.pred / coef.corr (a learned
                         solver's coefficient table) when learned
    schedule.json        the same as lists + NFE, solver, options, parameterization, what was learned, and
                         ``sampler`` (how the student evaluates the network: noise estimate, coefficient table
                         layout) -- :meth:`ld3_cli.solvers.sampler.Sampler.from_tensors` reads it back
    summary.json         init, validation loss of the learned schedule and of every baseline
    train_log.jsonl      one line per iteration (loss, accepted noise moves, lr, val)
    schedule.png         (a) log-SNR vs step for learned and baseline schedules, (b) validation loss
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import NumericalError
from ..ld3.checkpoint import TrainStateFile, restart_state_name
from ..ld3 import LD3Trainer, LearnedSchedule, TrainOptions
from ..ld3.restarts import best_restart
from ..store import Artifact, atomic_write_text, make_key, to_plain
from .artifacts import teacher_artifact
from .context import StageContext
from .keys import schedule_fields

log = logging.getLogger("ld3")
# training pairs (half of configs/train/learned_solver.yaml's teacher.n) below which learned coefficients gained
# less over LD3 on the mixture (docs/reproduction.md, "How many teacher pairs")
LEARNED_SOLVER_TRAIN_PAIRS = 500
KIND = "schedules"


def train_schedule(ctx: StageContext) -> Artifact:
    """The learned schedule for this config, trained when missing (MissingArtifactError without teacher pairs)."""
    teacher = teacher_artifact(ctx, produce=False)
    fields = schedule_fields(ctx.cfg, ctx.settings.solver, teacher.key)
    # a model that cannot be loaded fails in `prepare`, before anything is written
    art = ctx.store.get_or_make(ctx.model_key, KIND, fields, lambda: _train(ctx, teacher, make_key(fields)),
                                producer=ctx.command("train"), prepare=lambda: ctx.model)
    return art


def _log_coefficient_plan(trainer: LD3Trainer, opts: TrainOptions) -> None:
    """Say up front what a run that learns coefficients will do, and warn when it has too few training pairs."""
    log.info("phases: %s; the coefficients with %s at lr %g, batch %d",
             ", ".join(f"{p.name} {p.budget} it" for p in trainer.phases), opts.coefficients_optimizer,
             opts.lr_coefficients, trainer.batch_size(next(p for p in trainer.phases if p.coefficients)))
    if trainer.n_train < LEARNED_SOLVER_TRAIN_PAIRS:
        log.warning("learning solver coefficients from %d training pairs: they fit few pairs and gain less over LD3 "
                    "than with %d (teacher.n=%d, as train=learned_solver makes; measured in docs/reproduction.md, "
                    "'How many teacher pairs')", trainer.n_train, LEARNED_SOLVER_TRAIN_PAIRS,
                    2 * LEARNED_SOLVER_TRAIN_PAIRS)


def _train(ctx: StageContext, teacher: Artifact, key: str) -> dict:
    """Train (resuming saved states; every restart its own) and return the artifact's contents."""
    n = int(teacher.config["n"])
    tt = teacher.tensors({"noises": (n, *tuple(ctx.model.shape)), "images": (n, None, None, None)})
    opts = ctx.settings.train  # checked once, at the boundary
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    bar = ctx.progress(opts.total_iterations(), f"LD3 {ctx.solver_name} NFE {ctx.nfe}", "it")
    per_restart = opts.schedule_iterations()
    files = {}

    def on_iter(rec):
        bar.update(1)
        if "val" in rec:
            bar.set_postfix(loss=f"{rec['loss']:.4g}", val=f"{rec['val']:.4g}", best=f"{rec['best_val']:.4g}")

    def build(k: int, options: TrainOptions) -> LD3Trainer:
        trainer = LD3Trainer(ctx.model, ctx.solver_name, ctx.solver_options, ctx.nfe, tt["noises"], tt["images"],
                             tt.get("cond"), options)
        files[k] = TrainStateFile(part, name=restart_state_name(k))
        if files[k].restore(trainer):
            log.info("resuming training at iteration %d (phase %d) from %s", trainer.state.iteration,
                     trainer.state.phase_index, files[k].path)
        trainer.start()  # scores the baselines and picks the start (a restored run has both already)
        if k == 0:
            _log_plan(ctx, trainer, options)
        trainer.progress = on_iter
        return trainer

    def schedule_phases(k: int, trainer: LD3Trainer) -> dict:
        bar.update(max(0, k * per_restart + trainer.state.iteration - bar.n))  # a resumed restart's progress
        with _state_saved(trainer, files[k], part):
            done = trainer.run_schedule_phases(checkpoint=files[k].capture)
            files[k].capture(trainer, write=True)  # its LD3 phases are done: a rerun does not train them again
        if opts.restarts > 1:
            log.info("restart %d/%d (seed %d): validation %s %.6g after %d iterations", k + 1, opts.restarts,
                     trainer.options.seed, trainer.loss_name, done["best_val"], done["iterations"])
        return done

    try:
        trainer, record = best_restart(opts, build, schedule_phases)
        kept = next(i for i, r in enumerate(record) if r["kept"])
        if opts.restarts > 1:
            log.info("keeping restart %d (seed %d)", kept + 1, record[kept]["seed"])
        bar.update(max(0, opts.restarts * per_restart + trainer.state.iteration - record[kept]["iterations"] - bar.n))
        with _state_saved(trainer, files[kept], part):
            res = trainer.run(checkpoint=files[kept].capture).with_restarts(record)
            contents = _contents(ctx, trainer, res, teacher)
            files[kept].write()  # the finished state: should publishing fail, a rerun trains no further
        return contents
    finally:
        bar.close()


def _log_plan(ctx: StageContext, trainer: LD3Trainer, opts: TrainOptions) -> None:
    """Say up front what the run will do."""
    log.info("training LD3: solver=%s order=%s NFE=%d (%d steps%s), learn=%s, init=%s, loss=%s, r=%.4g, "
             "%d train / %d val, batch %d, checkpointing %s%s", ctx.solver_name, ctx.solver_options.get("order"),
             ctx.nfe, trainer.n_steps, ", the first analytic" if ctx.analytic_first else "", ",".join(opts.learn),
             trainer.state.init_name, trainer.loss_name, trainer.radius, trainer.n_train, len(trainer.val_pairs),
             opts.batch_size, "on" if trainer.grad_checkpoint else "off",
             f", best of {opts.restarts} restarts" if opts.restarts > 1 else "")
    if "coefficients" in opts.learn:
        _log_coefficient_plan(trainer, opts)
    residual = next((p for p in trainer.phases if p.residual), None)
    if residual is not None:
        joint = f"with {', '.join(residual.groups[1:])} at {residual.rate_factor:g}x their rates" \
            if len(residual.groups) > 1 else "alone"
        log.info("then the residual operator (%d hidden channels a step) %s for %d it, with adam at lr %g, batch %d",
                 opts.residual_width, joint, residual.budget, opts.lr_residual, trainer.batch_size(residual))


@contextmanager
def _state_saved(trainer: LD3Trainer, state_file: TrainStateFile, part: Path):
    """Keep what a failure would lose: on a numerical failure the best schedule so far (``best_schedule.json``, and
    the error says where), on any other failure or interrupt the last state taken between iterations."""
    try:
        yield
    except NumericalError as e:
        path = part / "best_schedule.json"
        sig, ev = trainer.best_values()
        part.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"sigmas": sig.tolist(), "sigmas_eval": ev.tolist(),
                                            "best_val": trainer.state.best_val,
                                            "iteration": trainer.state.iteration}, indent=2))
        raise NumericalError(f"{e}; the best schedule so far (validation {trainer.state.best_val:.5g}) is kept in "
                             f"{path}") from None
    except BaseException:
        try:
            state_file.write()  # the last state between iterations (the live one may be mid-iteration)
        except OSError as e:  # e.g. the disk is full: the state saved before stays as it is
            log.warning("could not save the training state (%s); the one saved before is kept", e)
        raise


def _contents(ctx: StageContext, trainer: LD3Trainer, res: LearnedSchedule, teacher: Artifact) -> dict:
    """The learned schedule's artifact: tensors, schedule.json, summary.json, train_log.jsonl, schedule.png."""
    sched = ctx.model.schedule
    sig, ev = res.sigmas, res.sigmas_eval
    tensors = {**res.sampler.tensors(), "t": sched.t(sig), "t_eval": sched.t(ev), "lambdas": -torch.log(sig),
               "lambdas_eval": -torch.log(ev)}
    schedule_json = {"sigmas": sig.tolist(), "sigmas_eval": ev.tolist(), "t": tensors["t"].tolist(),
                     "t_eval": tensors["t_eval"].tolist(), "lambdas": tensors["lambdas"].tolist(), "nfe": res.nfe,
                     "steps": trainer.n_steps, "solver": ctx.solver_name, "solver_options": ctx.solver_options,
                     "param": res.param, "learn": list(res.learn), "eval_scale": res.eval_scale,
                     "eval_scales": None if res.eval_scales is None else res.eval_scales.tolist(),
                     "sampler": res.sampler.plain(), "noise_schedule": sched.to_dict(),
                     "model": ctx.model_cfg.get("name")}
    if res.sampler.coefficients is not None:
        c = res.sampler.coefficients
        schedule_json["coefficients"] = {k: None if getattr(c, k) is None else getattr(c, k).tolist()
                                         for k in ("a", "b", "pred", "corr")}
    summary = res.summary()
    summary.update({"teacher_check": teacher.manifest["info"].get("teacher_check"), "n_train": trainer.n_train,
                    "n_val": len(trainer.val_pairs), "grad_checkpoint": trainer.grad_checkpoint,
                    "loss_requested": trainer.options.loss})
    log_lines = "".join(json.dumps(to_plain(r)) + "\n" for r in res.history)
    files = {"schedule.json": json.dumps(schedule_json, indent=2),
             "summary.json": json.dumps(to_plain(summary), indent=2), "train_log.jsonl": log_lines}
    try:
        from ..utils.plots import schedule_plot

        base = res.sampler.base_table() if res.sampler.coefficients is not None else None
        files["schedule.png"] = schedule_plot(res, trainer.state.baselines, sched, base)
    except Exception as e:  # noqa: BLE001 - a plot must never lose a trained schedule
        log.warning("could not draw schedule.png: %s", e)
    info = {"best_val": res.best_val, "init": res.init, "init_val": res.init_val, "loss": res.loss,
            "learn": list(res.learn), "best_phase": res.best_phase,
            "after_phase": [[k, v] for k, v in res.after_phase.items()],  # a list: the phases' order survives JSON
            "iterations": res.iterations, "seconds": res.seconds, "radius": res.radius,
            "baselines": {k: v["val"] for k, v in res.baselines.items()}}
    if res.restarts:
        info["restarts"] = res.restarts
    return {"tensors": tensors, "files": files, "info": info, "inputs": {"teacher": teacher.key}}


def report(art: Artifact) -> None:
    """Print where the learned schedule is and how it did (validation loss, the baselines'); briefly when reused."""
    if not art.made:
        print(f"learned schedule (already trained): {art.path}")
        return
    info = art.manifest["info"]
    print(f"learned schedule: {art.path}")
    print(f"  validation {info['loss']}: {info['best_val']:.5g} (init {info['init']}: {info['init_val']:.5g}); "
          f"{info['iterations']} iterations in {info['seconds']:.1f}s")
    base = ", ".join(f"{k} {v:.4g}" for k, v in sorted(info["baselines"].items(), key=lambda kv: kv[1]))
    print(f"  baselines (validation): {base}")
    restarts = info.get("restarts") or []
    if restarts:  # train.restarts: what each run's LD3 phases reached, and which went on
        print("  restarts (validation after LD3's phases): " + ", ".join(
            f"seed {r['seed']} {r['best_val']:.5g}" + (" (kept)" if r["kept"] else "") for r in restarts)
            + f"; {sum(r['seconds'] for r in restarts):.1f}s in all")
    phases = info.get("after_phase") or []
    if len(phases) > 1:  # say what each phase added (e.g. the learned coefficients over LD3's time steps)
        print("  best validation after each phase: " + ", ".join(f"{k} {v:.5g}" for k, v in phases)
              + f"; the result is from phase '{info.get('best_phase')}'")
