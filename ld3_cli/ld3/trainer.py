"""The LD3 trainer: learn a solver's time steps by back-propagating through the solver.

Objective (Tong et al., ICLR 2025): for teacher pairs ``(eps_n, y_n)`` (input noise, teacher
image), minimise ``mean_n loss(decode(solve(D, sigma_max * eps'_n, sigmas(theta), sigmas_eval(theta, delta))), y_n)``
over the schedule logits ``theta`` (phase 1) and then jointly with the decoupled evaluation
offsets ``delta`` (phase 2), where each ``eps'_n`` may move inside a small ball around ``eps_n``
(soft teacher forcing, :mod:`ld3_cli.ld3.soft_teacher`).

Optimisation follows the paper: RMSprop (lr 5e-3, momentum 0.9) on the logits, SGD on the
offsets (lr ``lr_offsets / NFE``), gradient-norm clipping at 1, learning-rate decay by
``lr_decay`` after ``patience`` validations without improvement (restoring the best
parameters), a phase ends at its iteration budget or when the learning rate reaches
``min_lr``.  Differences, all for speed or rigour: the validation set is evaluated in one
batch with the *hard* loss from the true noises (what sampling will see), the initial schedule
is a validation candidate (so the result is never worse than its initialisation on
validation), batches can be large, and each solver step can be gradient-checkpointed.

Use :func:`learn_schedule` from Python; the ``ld3 train`` stage wraps it with the store.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError, NumericalError
from ..schedules import discretize
from ..solvers import get_solver, solve
from .losses import resolve_loss
from .optim import SGD, RMSpropMomentum, zero_grad
from .parameterization import ScheduleParameterization
from .soft_teacher import accept_moves, default_radius, default_shift_lr, propose_move

log = logging.getLogger(__name__)

DEFAULT_INIT_CANDIDATES = ("logsnr", "edm", "time_uniform", "time_quadratic")


@dataclass
class TrainOptions:
    """Trainer settings (the ``train`` config group; see configs/train/default.yaml)."""

    param: str = "lambda"
    init: str = "auto"
    init_candidates: tuple = DEFAULT_INIT_CANDIDATES
    loss: str = "auto"
    lpips_weights: Optional[str] = None
    val_fraction: float = 0.5
    batch_size: int = 2
    val_batch_size: int = 0          # 0 = the whole validation set in one batch
    lr: float = 5e-3
    momentum: float = 0.9
    offsets_optimizer: str = "rmsprop"  # rmsprop (ld3's default) or sgd (the paper's code)
    lr_offsets: float = 0.005        # sgd: divided by NFE, as in the paper's code (use 0.1 there)
    lr_decay: float = 0.8
    min_lr: float = 5e-5
    patience: int = 5
    grad_clip: float = 1.0
    iters_phase1: int = 50
    iters_phase2: int = 125
    decoupled: bool = True
    win_rate: float = 0.5
    gamma: float = 0.001
    r: Optional[float] = None        # explicit soft-teacher radius; 0 = hard loss
    shift_lr: Optional[float] = None
    val_every: int = 1
    grad_checkpoint: Any = "auto"    # auto: on when the model has > 1M parameters
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; valid: {sorted(known)}")
        d = dict(d)
        if "init_candidates" in d and d["init_candidates"] is not None:
            d["init_candidates"] = tuple(d["init_candidates"])
        return cls(**d)


@dataclass
class LearnedSchedule:
    """Result of training: the best schedule by validation loss and how it was found."""

    sigmas: torch.Tensor
    sigmas_eval: torch.Tensor
    nfe: int
    solver: str
    solver_options: dict
    param: str
    loss: str
    init: str
    init_val: float
    best_val: float
    baselines: dict                  # name -> {"train": loss, "val": loss}
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    radius: float = 0.0
    stopped: str = ""

    def summary(self) -> dict:
        d = asdict(self)
        d["sigmas"] = self.sigmas.tolist()
        d["sigmas_eval"] = self.sigmas_eval.tolist()
        d.pop("history")
        return d


class _Checkpointed(nn.Module):
    """Recompute the denoiser in the backward pass instead of storing its activations."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, cond=None):
        return torch.utils.checkpoint.checkpoint(self.inner, x, sigma, cond, use_reentrant=False)


def _num_params(m) -> int:
    return sum(p.numel() for p in m.parameters()) if isinstance(m, nn.Module) else 0


class LD3Trainer:
    """Stateful trainer; ``run()`` returns a :class:`LearnedSchedule`.  State is resumable.

    Args:
        denoiser: sigma-space denoiser (a :class:`~ld3_cli.models.Denoiser`).
        solver, solver_options: the student solver and its options (order, variant, ...).
        nfe: the student's number of network evaluations.
        noises: ``[n, C, H, W]`` unit-variance input noises (the solver starts at ``sigma_max * noise``).
        targets: ``[n, C', H', W']`` teacher images in ``[-1, 1]`` (decoded).
        cond: ``None`` or a tensor whose first dimension indexes samples.
        options: :class:`TrainOptions`.
        baseline_sigmas: optional ``{name: sigmas}`` overriding the computed baselines (e.g. cached GITS).
    """

    def __init__(self, denoiser, solver: str, solver_options: dict, nfe: int, noises: torch.Tensor,
                 targets: torch.Tensor, cond: Optional[torch.Tensor] = None,
                 options: Optional[TrainOptions] = None, baseline_sigmas: Optional[dict] = None,
                 progress: Optional[Callable[[dict], None]] = None):
        self.opt = options or TrainOptions()
        o = self.opt
        self.denoiser = denoiser
        self.solver = solver
        spec = get_solver(solver)
        self.n_steps = spec.steps_for_nfe(nfe)
        self.solver_options = dict(solver_options or {})
        self.solver_options["order"] = spec.validate(self.n_steps, self.solver_options.get("order"))
        self.nfe = int(nfe)
        self.schedule = denoiser.schedule
        self.device = getattr(denoiser, "device", torch.device("cpu"))
        self.dtype = getattr(denoiser, "dtype", torch.float32)
        n = noises.shape[0]
        if targets.shape[0] != n:
            raise ConfigError(f"noises ({n}) and targets ({targets.shape[0]}) differ in count")
        n_val = int(round(n * o.val_fraction))
        if n_val < 1 or n - n_val < 1:
            raise ConfigError(f"need at least one training and one validation sample; got n={n}, "
                              f"val_fraction={o.val_fraction}")
        self.n_train = n - n_val
        dev = self.device
        self.eps_orig = noises[: self.n_train].to(dev, self.dtype)
        self.eps = self.eps_orig.clone()
        self.y_train = targets[: self.n_train].to(dev)
        self.eps_val = noises[self.n_train:].to(dev, self.dtype)
        self.y_val = targets[self.n_train:].to(dev)
        self.c_train = cond[: self.n_train].to(dev) if isinstance(cond, torch.Tensor) else None
        self.c_val = cond[self.n_train:].to(dev) if isinstance(cond, torch.Tensor) else None
        self.dim = int(math.prod(noises.shape[1:]))
        self.radius = float(o.r) if o.r is not None else default_radius(o.gamma, self.dim, self.nfe)
        self.shift_lr = float(o.shift_lr) if o.shift_lr is not None else default_shift_lr(self.nfe)
        self.loss_name, self.loss_fn = resolve_loss(o.loss, targets.shape[1], dev, o.lpips_weights)
        ckpt = o.grad_checkpoint
        if ckpt == "auto":
            ckpt = _num_params(denoiser) > 1_000_000
        self.net = _Checkpointed(denoiser) if ckpt else denoiser
        self.grad_checkpoint = bool(ckpt)
        self.progress = progress
        self.sigma_max = float(self.schedule.sigma_max)

        # baselines and initialisation
        self.baseline_sigmas = dict(baseline_sigmas or {})
        self.baselines: dict[str, dict] = {}
        self.init_name, init_sigmas = self._choose_init()
        self.param = ScheduleParameterization(self.schedule, init_sigmas, o.param, o.win_rate)
        self.param.to(dev)
        self.gen = torch.Generator().manual_seed(int(o.seed))
        self.perm: Optional[torch.Tensor] = None  # the current epoch's order and position in it
        self.batch_pos = 0
        self.phase = 1
        self.iteration = 0
        self.phase_iter = 0
        self.bad = 0
        self.history: list[dict] = []
        self.init_val = self.baselines[self.init_name]["val"]
        self.best_val = self.init_val
        self.best_state = self._param_state()
        self.best_phase = 0
        self.stopped = ""
        self._make_optimizers()
        self.elapsed = 0.0

    # -- building blocks ----------------------------------------------------------------------
    def _make_optimizers(self):
        o = self.opt
        self.opt_logits = RMSpropMomentum(self.param.logits, lr=o.lr, momentum=o.momentum)
        if o.offsets_optimizer == "sgd":
            self.opt_offsets = SGD(self.param.offsets, lr=o.lr_offsets / self.nfe)
        elif o.offsets_optimizer == "rmsprop":
            self.opt_offsets = RMSpropMomentum(self.param.offsets, lr=o.lr_offsets, momentum=o.momentum)
        else:
            raise ConfigError(f"train.offsets_optimizer must be rmsprop or sgd, got '{o.offsets_optimizer}'")

    def _param_state(self) -> dict:
        return {"logits": self.param.logits.detach().clone(), "offsets": self.param.offsets.detach().clone()}

    def _load_param_state(self, st: dict):
        with torch.no_grad():
            self.param.logits.copy_(st["logits"])
            self.param.offsets.copy_(st["offsets"])

    def student(self, eps: torch.Tensor, cond, sigmas: torch.Tensor, sigmas_eval: torch.Tensor,
                net=None) -> torch.Tensor:
        """Decoded student images for unit noises ``eps`` on the given schedule."""
        x = eps * self.sigma_max
        out = solve(self.solver, net or self.denoiser, x, sigmas, sigmas_eval, cond, check=False, **self.solver_options)
        return self.denoiser.decode(out) if hasattr(self.denoiser, "decode") else out

    @torch.no_grad()
    def evaluate(self, sigmas: torch.Tensor, sigmas_eval: Optional[torch.Tensor] = None,
                 split: str = "val") -> torch.Tensor:
        """Per-sample hard loss ``[n]`` on a split from the true noises."""
        if split == "val":
            eps, y, c = self.eps_val, self.y_val, self.c_val
        else:
            eps, y, c = self.eps_orig, self.y_train, self.c_train
        bs = self.opt.val_batch_size or eps.shape[0]
        losses = []
        for i in range(0, eps.shape[0], bs):
            ci = c[i:i + bs] if c is not None else None
            out = self.student(eps[i:i + bs], ci, sigmas, sigmas_eval if sigmas_eval is not None else sigmas)
            losses.append(self.loss_fn(out.float(), y[i:i + bs].float()).double())
        return torch.cat(losses)

    def _choose_init(self):
        o = self.opt
        names = list(o.init_candidates) if o.init == "auto" else [o.init]
        for name in set(self.baseline_sigmas) - set(names):
            names.append(name)
        best = None
        for name in names:
            if name in self.baseline_sigmas:
                sig = torch.as_tensor(self.baseline_sigmas[name], dtype=torch.float64)
            else:
                try:
                    sig = discretize(name, self.n_steps, self.schedule)
                except ConfigError as e:
                    if o.init != "auto":
                        raise
                    log.info("baseline %s skipped: %s", name, e)
                    continue
            sig = sig.to(self.device)
            tr = float(self.evaluate(sig, split="train").mean())
            va = float(self.evaluate(sig, split="val").mean())
            self.baselines[name] = {"train": tr, "val": va, "sigmas": sig.tolist()}
            if (o.init == "auto" and name in o.init_candidates) or name == o.init:
                if best is None or tr < self.baselines[best]["train"]:
                    best = name
        if best is None:
            raise ConfigError(f"no usable initial schedule among {names}")
        return best, torch.as_tensor(self.baselines[best]["sigmas"], dtype=torch.float64)

    # -- one iteration ------------------------------------------------------------------------
    def _step(self, idx: torch.Tensor) -> dict:
        o = self.opt
        decoupled = self.phase == 2
        eps_in = self.eps[idx].detach().clone().requires_grad_(self.radius > 0)
        cond = self.c_train[idx] if self.c_train is not None else None
        sig, sig_eval = self.param(decoupled)
        out = self.student(eps_in, cond, sig, sig_eval, net=self.net)
        loss_vec = self.loss_fn(out.float(), self.y_train[idx].float())
        loss = loss_vec.mean()
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss became {loss.item()} at iteration {self.iteration}; "
                                 "lower train.lr or check the model's outputs "
                                 "(best_values() holds the best schedule so far)")
        zero_grad(self.param.logits, self.param.offsets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.param.logits], o.grad_clip)
        self.opt_logits.step()
        if decoupled:
            torch.nn.utils.clip_grad_norm_([self.param.offsets], o.grad_clip)
            self.opt_offsets.step()
        accepted = 0
        if self.radius > 0 and eps_in.grad is not None:
            proposal = propose_move(eps_in.detach(), eps_in.grad, self.eps_orig[idx], self.radius, self.shift_lr)
            with torch.no_grad():
                s2, e2 = self.param(decoupled)
                new_loss = self.loss_fn(self.student(proposal, cond, s2, e2).float(), self.y_train[idx].float())
            updated, mask = accept_moves(self.eps[idx], proposal, new_loss, loss_vec.detach())
            self.eps[idx] = updated
            accepted = int(mask.sum())
        return {"loss": float(loss.detach()), "accepted": accepted}

    def _validate(self) -> dict:
        sig, sig_eval = self.param.values(self.phase == 2)
        val = float(self.evaluate(sig, sig_eval).mean())
        if not math.isfinite(val):
            raise NumericalError(f"validation loss became {val} at iteration {self.iteration}; "
                                 "check the model's outputs (best_values() holds the best schedule so far)")
        improved = val < self.best_val
        if improved:
            self.best_val, self.best_state, self.best_phase, self.bad = val, self._param_state(), self.phase, 0
        else:
            self.bad += 1
            if self.bad >= self.opt.patience:
                self._load_param_state(self.best_state)
                self.bad = 0
                self.opt_logits.lr = max(self.opt_logits.lr * self.opt.lr_decay, self.opt.min_lr)
                if self.phase == 2:
                    self.opt_offsets.lr = max(self.opt_offsets.lr * self.opt.lr_decay, self.opt.min_lr * 1e-2)
        return {"val": val, "best_val": self.best_val, "improved": improved}

    def _phase_budget(self) -> int:
        return self.opt.iters_phase1 if self.phase == 1 else (self.opt.iters_phase2 if self.opt.decoupled else 0)

    def _phase_done(self) -> bool:
        lr = self.opt_logits.lr
        return self.phase_iter >= self._phase_budget() or lr <= self.opt.min_lr

    # -- main loop ----------------------------------------------------------------------------
    def run(self, checkpoint: Optional[Callable[["LD3Trainer"], None]] = None) -> LearnedSchedule:
        """Train until both phases are done; calls ``checkpoint(self)`` after each validation."""
        start = time.perf_counter() - self.elapsed
        bs = max(1, min(int(self.opt.batch_size), self.n_train))
        while self.phase <= 2:
            if self._phase_done():
                if self.phase == 1:
                    self.phase, self.phase_iter, self.bad = 2, 0, 0
                    self._load_param_state(self.best_state)
                    self._make_optimizers()
                    continue
                self.phase = 3
                break
            if self.perm is None or self.batch_pos + bs > self.n_train:  # a new epoch (drop the ragged tail)
                self.perm = torch.randperm(self.n_train, generator=self.gen)
                self.batch_pos = 0
            idx = self.perm[self.batch_pos:self.batch_pos + bs].to(self.device)
            self.batch_pos += bs
            rec = self._step(idx)
            self.iteration += 1
            self.phase_iter += 1
            rec.update(iteration=self.iteration, phase=self.phase, lr=self.opt_logits.lr,
                       seconds=time.perf_counter() - start)
            if self.iteration % max(1, self.opt.val_every) == 0:
                rec.update(self._validate())
            self.history.append(rec)
            self.elapsed = time.perf_counter() - start
            if self.progress is not None:
                self.progress(rec)
            if "val" in rec and checkpoint is not None:
                checkpoint(self)
        self.stopped = self.stopped or "budget"
        self._load_param_state(self.best_state)
        sig, sig_eval = self.param.values(self.best_phase == 2)
        self.elapsed = time.perf_counter() - start
        return LearnedSchedule(
            sigmas=sig.cpu(), sigmas_eval=sig_eval.cpu(), nfe=self.nfe, solver=self.solver,
            solver_options=dict(self.solver_options), param=self.opt.param, loss=self.loss_name,
            init=self.init_name, init_val=self.init_val, best_val=self.best_val,
            baselines={k: {"train": v["train"], "val": v["val"]} for k, v in self.baselines.items()},
            history=self.history, iterations=self.iteration, seconds=self.elapsed, radius=self.radius,
            stopped=self.stopped)

    def best_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, sigmas_eval) of the best schedule so far, without disturbing training."""
        current = self._param_state()
        self._load_param_state(self.best_state)
        sig, ev = self.param.values(self.best_phase == 2)
        self._load_param_state(current)
        return sig.cpu(), ev.cpu()

    # -- resumable state ----------------------------------------------------------------------
    def state_tensors(self) -> dict:
        """Everything needed to resume, as tensors (saved with safetensors) ..."""
        t = {"logits": self.param.logits.detach(), "offsets": self.param.offsets.detach(), "eps": self.eps,
             "best_logits": self.best_state["logits"], "best_offsets": self.best_state["offsets"],
             "gen_state": self.gen.get_state()}
        if self.perm is not None:
            t["perm"] = self.perm
        for name, optim in (("rms", self.opt_logits), ("off", self.opt_offsets)):
            for k, v in optim.state().items():
                t[f"{name}.{k}"] = v.detach()
        return t

    def state_info(self) -> dict:
        """... and plain data (saved as JSON)."""
        return {"phase": self.phase, "iteration": self.iteration, "phase_iter": self.phase_iter, "bad": self.bad,
                "batch_pos": self.batch_pos,
                "best_val": self.best_val, "best_phase": self.best_phase, "elapsed": self.elapsed,
                "lr_logits": self.opt_logits.lr, "lr_offsets": self.opt_offsets.lr, "history": self.history,
                "init": self.init_name, "init_val": self.init_val}

    def load_state(self, tensors: dict, info: dict) -> None:
        """Restore a state written by :meth:`state_tensors` / :meth:`state_info`."""
        dev = self.device
        self._load_param_state({"logits": tensors["logits"].to(dev), "offsets": tensors["offsets"].to(dev)})
        self.eps = tensors["eps"].to(dev, self.dtype)
        self.best_state = {"logits": tensors["best_logits"].to(dev), "offsets": tensors["best_offsets"].to(dev)}
        self.gen.set_state(tensors["gen_state"])
        self.perm = tensors["perm"].long() if "perm" in tensors else None
        self.batch_pos = int(info.get("batch_pos", 0))
        self.phase, self.iteration, self.phase_iter = info["phase"], info["iteration"], info["phase_iter"]
        self.bad, self.best_val, self.best_phase = info["bad"], info["best_val"], info["best_phase"]
        self.elapsed, self.history = info.get("elapsed", 0.0), list(info.get("history", []))
        self._make_optimizers()
        self.opt_logits.lr, self.opt_offsets.lr = info["lr_logits"], info["lr_offsets"]
        self.opt_logits.load({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("rms.")})
        off = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("off.")}
        if off:
            self.opt_offsets.load(off)


def learn_schedule(denoiser, solver: str, nfe: int, noises: torch.Tensor, targets: torch.Tensor,
                   schedule: str = "auto", cond: Optional[torch.Tensor] = None,
                   solver_options: Optional[dict] = None, **options) -> LearnedSchedule:
    """Learn an LD3 schedule in one call (for notebooks).

    Args:
        denoiser: sigma-space denoiser ``D(x, sigma[B], cond) -> x0`` with ``schedule`` and ``decode``.
        solver: solver name (euler, heun, dpmpp, unipc, ipndm, deis); ``solver_options`` its options.
        nfe: student NFE.
        noises: ``[n, C, H, W]`` unit-variance noises; targets: ``[n, ...]`` teacher images in [-1, 1].
        schedule: initialisation, ``"auto"`` (best baseline on the training split) or a baseline name.
        **options: any :class:`TrainOptions` field (``batch_size``, ``r``, ``param``, ``decoupled`` ...).

    Returns:
        :class:`LearnedSchedule` with ``sigmas`` / ``sigmas_eval`` (float64, ``[N + 1]``).
    """
    opts = TrainOptions.from_dict({**options, "init": schedule})
    trainer = LD3Trainer(denoiser, solver, solver_options or {}, nfe, noises, targets, cond, opts)
    return trainer.run()
