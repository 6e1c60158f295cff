"""``ld3 train`` (alias ``train-discretization``): learn the LD3 schedule for the current solver and NFE.

Reads the teacher pairs from the store (``ld3 teacher-sample`` makes them), trains with
:class:`~ld3_cli.ld3.trainer.LD3Trainer`, saving its state to ``<key>.partial/state.safetensors``
(at most every few seconds, and on Ctrl-C / SIGTERM / any failure), so rerunning the same command
resumes exactly where it stopped, mid-epoch included.  Only states taken between iterations are
saved (an interrupt mid-iteration saves the state before that iteration), and the tensors and the
plain data (JSON in the file's metadata) are one file, replaced atomically.  The artifact holds

    tensors.safetensors  sigmas, sigmas_eval, t, t_eval (native time), lambdas, lambdas_eval
    schedule.json        the same as lists + NFE, solver, options, parameterization, loss
    summary.json         init, validation loss of the learned schedule and of every baseline
    train_log.jsonl      one line per iteration (loss, accepted noise moves, lr, val)
    schedule.png         (a) log-SNR vs step for learned and baseline schedules, (b) validation loss
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Optional

import torch

from ..errors import MissingArtifactError, NumericalError
from ..ld3.trainer import LD3Trainer, LearnedSchedule, TrainOptions
from ..store import Artifact, atomic_write_text, load_tensors, make_key, read_metadata, save_tensors, to_plain
from .context import StageContext
from .keys import schedule_fields
from .teacher_sample import teacher_artifact

log = logging.getLogger("ld3")
KIND = "schedules"
SAVE_EVERY_S = 5.0
STATE_FILE = "state.safetensors"
STATE_META = "ld3_train_state"


def schedule_key(ctx: StageContext) -> tuple[str, dict]:
    teacher = teacher_artifact(ctx, produce=False)
    fields = schedule_fields(ctx.cfg, teacher.key)
    return make_key(fields), fields


def learned_schedule(ctx: StageContext) -> Artifact:
    """The learned schedule for the current config (MissingArtifactError names the train command)."""
    try:
        key, _ = schedule_key(ctx)
    except MissingArtifactError:
        raise MissingArtifactError(f"no learned schedule for solver={ctx.solver_name} nfe={ctx.nfe} (and no teacher "
                                   f"samples yet); produce it with `{ctx.command('teacher-sample')}` then "
                                   f"`{ctx.command('train')}`, or `{ctx.command('run')}`") from None
    if not ctx.store.exists(ctx.model_key, KIND, key):
        raise MissingArtifactError(f"no learned schedule for solver={ctx.solver_name} nfe={ctx.nfe} in "
                                   f"{ctx.store.root}; produce it with `{ctx.command('train')}`")
    return ctx.store.open(ctx.model_key, KIND, key, producer=ctx.command("train"))


def load_schedule(art: Artifact, schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, sigmas_eval) of a learned-schedule artifact, validated against the model's range."""
    from ..errors import CorruptArtifactError
    from ..schedules.discretize import check_sigmas
    from ..solvers import get_solver

    n = get_solver(str(art.config["solver"]["name"])).steps_for_nfe(int(art.config["nfe"]))
    t = art.tensors({"sigmas": (n + 1,), "sigmas_eval": (n + 1,)})
    rebuild = f"; delete {art.path} and rerun `{art.rebuild}`"
    try:
        sig = check_sigmas(t["sigmas"], n, "learned schedule")
    except Exception as e:  # noqa: BLE001 - any validation failure means a corrupt entry
        raise CorruptArtifactError(f"{art.path}: {e}{rebuild}") from None
    lo, hi = schedule.sigma_min, schedule.sigma_max
    tol = 1e-6 * hi
    if float(sig[0]) > hi + tol or float(sig[-1]) < lo - 1e-6 * lo:
        raise CorruptArtifactError(f"{art.path}: learned schedule leaves the model's range [{lo:.6g}, {hi:.6g}] "
                                   f"({float(sig[-1]):.6g}..{float(sig[0]):.6g}){rebuild}")
    ev = t["sigmas_eval"]
    if ev.shape != sig.shape or not bool(torch.all(ev > 0)):
        raise CorruptArtifactError(f"{art.path}: sigmas_eval is invalid{rebuild}")
    return sig, ev.to(torch.float64)


def train_options(ctx: StageContext) -> TrainOptions:
    return TrainOptions.from_dict(to_plain(ctx.cfg.train))


def run(ctx: StageContext) -> Artifact:
    """Stage entry point."""
    teacher = teacher_artifact(ctx, produce=False)
    fields = schedule_fields(ctx.cfg, teacher.key)
    key = make_key(fields)
    store = ctx.store
    if store.exists(ctx.model_key, KIND, key):
        art = store.open(ctx.model_key, KIND, key, producer=ctx.command("train"))
        print(f"learned schedule (already trained): {art.path}")
        return art
    _ = ctx.model  # a model that cannot be loaded fails here, before anything is written
    with store.lock(ctx.model_key, KIND, key):
        if store.exists(ctx.model_key, KIND, key):
            return store.open(ctx.model_key, KIND, key, producer=ctx.command("train"))
        art = _train(ctx, teacher, fields, key)
    _print_result(art)
    return art


class TrainState:
    """The trainer's resumable state in ``<part>/state.safetensors``.

    ``capture`` (the trainer's checkpoint callback, called between iterations) keeps a copy of
    the state and writes it after the first iteration and then whenever ``every_s`` seconds have
    passed since the last write; ``write``
    writes the last captured copy (used on interrupts and failures, when the live state may be
    half-way through an iteration).  Tensors and plain data share one file, so they always match.
    """

    def __init__(self, part, every_s: Optional[float] = None):
        self.part, self.every_s = part, float(SAVE_EVERY_S if every_s is None else every_s)
        self.snapshot = None
        self.last_write = float("-inf")

    @property
    def path(self):
        return self.part / STATE_FILE

    def capture(self, trainer: LD3Trainer) -> None:
        tensors = {k: v.detach().clone() for k, v in trainer.state_tensors().items()}
        info = dict(trainer.state_info())
        info["history"] = list(info.get("history", []))
        self.snapshot = (tensors, info)
        if time.monotonic() - self.last_write >= self.every_s:
            self.write()

    def write(self) -> None:
        if self.snapshot is None:
            return
        tensors, info = self.snapshot
        self.part.mkdir(parents=True, exist_ok=True)
        save_tensors(self.path, tensors, metadata={STATE_META: json.dumps(to_plain(info))})
        self.last_write = time.monotonic()

    def restore(self, trainer: LD3Trainer) -> bool:
        """Load a saved state into ``trainer``; False (and a warning) when there is none or it is unusable."""
        if not self.path.is_file():
            return False
        try:
            info = json.loads(read_metadata(self.path)[STATE_META])
            trainer.load_state(load_tensors(self.path), info)
        except Exception as e:  # noqa: BLE001 - a damaged state restarts training cleanly
            log.warning("ignoring unreadable training state %s (%s); starting over", self.path, e)
            return False
        return True


def _train(ctx: StageContext, teacher: Artifact, fields: dict, key: str) -> Artifact:
    model = ctx.model
    shape = tuple(model.shape)
    n = int(teacher.config["n"])
    tt = teacher.tensors({"noises": (n, *shape), "images": (n, None, None, None)})
    opts = train_options(ctx)
    trainer = LD3Trainer(model, ctx.solver_name, ctx.solver_options, ctx.nfe, tt["noises"], tt["images"],
                         tt.get("cond"), opts)
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    state = TrainState(part)
    if state.restore(trainer):
        log.info("resuming training at iteration %d (phase %d) from %s", trainer.iteration, trainer.phase, part)
    log.info("training LD3: solver=%s order=%s NFE=%d (%d steps), init=%s, loss=%s, r=%.4g, %d train / %d val, "
             "batch %d, checkpointing %s", ctx.solver_name, ctx.solver_options.get("order"), ctx.nfe, trainer.n_steps,
             trainer.init_name, trainer.loss_name, trainer.radius, trainer.n_train, trainer.eps_val.shape[0],
             opts.batch_size, "on" if trainer.grad_checkpoint else "off")

    total = opts.total_iterations()
    bar = ctx.progress(total, f"LD3 {ctx.solver_name} NFE {ctx.nfe}", "it", initial=trainer.iteration)

    def on_iter(rec):
        bar.update(1)
        if "val" in rec:
            bar.set_postfix(loss=f"{rec['loss']:.4g}", val=f"{rec['val']:.4g}", best=f"{rec['best_val']:.4g}")

    trainer.progress = on_iter
    try:
        result = trainer.run(checkpoint=state.capture)
        art = _publish(ctx, trainer, result, fields, teacher)
    except NumericalError as e:
        bar.close()
        path = part / "best_schedule.json"
        sig, ev = trainer.best_values()
        part.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"sigmas": sig.tolist(), "sigmas_eval": ev.tolist(),
                                            "best_val": trainer.best_val, "iteration": trainer.iteration}, indent=2))
        raise NumericalError(f"{e}; the best schedule so far (validation {trainer.best_val:.5g}) is kept in "
                             f"{path}") from None
    except BaseException:
        try:
            state.write()  # the last state between iterations (the live one may be mid-iteration)
        except OSError as e:  # e.g. the disk is full: the state saved before stays as it is
            log.warning("could not save the training state (%s); the one saved before is kept", e)
        raise
    finally:
        bar.close()
    shutil.rmtree(part, ignore_errors=True)
    return art


def _publish(ctx: StageContext, trainer: LD3Trainer, res: LearnedSchedule, fields: dict, teacher: Artifact) -> Artifact:
    sched = ctx.model.schedule
    sig, ev = res.sigmas, res.sigmas_eval
    tensors = {"sigmas": sig, "sigmas_eval": ev, "t": sched.t(sig), "t_eval": sched.t(ev),
               "lambdas": -torch.log(sig), "lambdas_eval": -torch.log(ev)}
    schedule_json = {"sigmas": sig.tolist(), "sigmas_eval": ev.tolist(), "t": tensors["t"].tolist(),
                     "t_eval": tensors["t_eval"].tolist(), "lambdas": tensors["lambdas"].tolist(), "nfe": res.nfe,
                     "steps": trainer.n_steps, "solver": ctx.solver_name, "solver_options": ctx.solver_options,
                     "param": res.param, "noise_schedule": sched.to_dict(), "model": ctx.model_cfg.get("name")}
    summary = res.summary()
    summary.update({"teacher_check": teacher.manifest["info"].get("teacher_check"), "n_train": trainer.n_train,
                    "n_val": int(trainer.eps_val.shape[0]), "grad_checkpoint": trainer.grad_checkpoint})
    log_lines = "".join(json.dumps(to_plain(r)) + "\n" for r in res.history)
    files = {"schedule.json": json.dumps(schedule_json, indent=2),
             "summary.json": json.dumps(to_plain(summary), indent=2), "train_log.jsonl": log_lines}
    try:
        from ..utils.plots import schedule_plot

        files["schedule.png"] = schedule_plot(res, trainer.baselines, sched)
    except Exception as e:  # noqa: BLE001 - a plot must never lose a trained schedule
        log.warning("could not draw schedule.png: %s", e)
    info = {"best_val": res.best_val, "init": res.init, "init_val": res.init_val, "loss": res.loss,
            "iterations": res.iterations, "seconds": res.seconds, "radius": res.radius,
            "baselines": {k: v["val"] for k, v in res.baselines.items()}}
    return ctx.store.write(ctx.model_key, KIND, fields, tensors=tensors, files=files, info=info,
                           inputs={"teacher": teacher.key}, command=ctx.command("train"))


def _print_result(art: Artifact) -> None:
    info = art.manifest["info"]
    print(f"learned schedule: {art.path}")
    print(f"  validation {info['loss']}: {info['best_val']:.5g} (init {info['init']}: {info['init_val']:.5g}); "
          f"{info['iterations']} iterations in {info['seconds']:.1f}s")
    base = ", ".join(f"{k} {v:.4g}" for k, v in sorted(info["baselines"].items(), key=lambda kv: kv[1]))
    print(f"  baselines (validation): {base}")
