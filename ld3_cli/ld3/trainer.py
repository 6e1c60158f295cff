"""The LD3 trainer: learn a solver's time steps (and, beyond LD3, its coefficients) through the solver.

Objective (Tong et al., ICLR 2025): for teacher pairs ``(eps_n, y_n)`` (input noise, teacher image),
minimise ``mean_n loss(decode(student(sigma_max * eps'_n)), y_n)`` where each ``eps'_n`` may move inside
a small ball around ``eps_n`` (soft teacher forcing, :mod:`ld3_cli.ld3.soft_teacher`).  What the student
learns is ``train.learn``, any subset of

* ``steps``: the schedule logits (:class:`~ld3_cli.ld3.parameterization.ScheduleParameterization`);
* ``offsets``: the decoupled evaluation times (LD3's phase 2);
* ``coefficients``: corrections to the solver's multistep weights
  (:class:`~ld3_cli.ld3.coefficients.CoefficientParameterization`, in the spirit of S4S).

Training runs in phases (:func:`plan_phases`): ``steps`` (``iters_phase1``), then ``steps + offsets``
(``iters_phase2``) -- exactly LD3 -- then the coefficients (``iters_phase3`` iterations of
``batch_size_coefficients`` pairs), jointly with what else is learned or, with ``alternate_rounds = k > 0``,
in ``k`` rounds that alternate coefficients alone and time steps alone (S4S-Alt).  Every phase starts
from the best parameters so far with fresh optimisers.

Optimisation follows the paper: RMSprop (lr 5e-3, momentum 0.9) on the logits; the offsets with
RMSprop (ld3's default, in window units) or the paper's SGD (``lr_offsets / NFE``); Adam (or RMSprop,
``coefficients_optimizer``; optionally with a decoupled decay, ``coefficient_decay``) on the coefficient
corrections; gradient-norm clipping at 1 per group; learning-rate decay by ``lr_decay``
after ``patience`` validations without improvement (restoring the best parameters); a phase ends at
its budget or when its first group's learning rate reaches ``min_lr``.  Differences, for speed or
rigour: validation uses the *hard* loss from the true noises in one batch (what sampling sees), the
initial schedule is a validation candidate (the result is never worse than it on validation), and
each solver step can be gradient-checkpointed.

Use :func:`learn_schedule` from Python; the ``ld3 train`` stage wraps :class:`LD3Trainer` with the store.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError, NumericalError
from ..solvers import get_solver
from ..solvers.sampler import Sampler
from .coefficients import CoefficientParameterization
from .losses import resolve_loss
from .optim import Adam, SGD, RMSpropMomentum, zero_grad
from .options import TrainOptions, effective_learn
from .parameterization import ScheduleParameterization
from .phases import Phase, plan_phases
from .result import LearnedSchedule
from .soft_teacher import accept_moves, default_radius, default_shift_lr, propose_move
from .start import Pairs, choose_init, split_pairs

log = logging.getLogger(__name__)


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

    The constructor only builds; :meth:`start` scores the baselines and chooses the start (``run`` calls it),
    or :meth:`load_state` restores a saved run without scoring anything again.
    """

    def __init__(self, denoiser, solver: str, solver_options: dict, nfe: int, noises: torch.Tensor,
                 targets: torch.Tensor, cond: Optional[torch.Tensor] = None,
                 options: Optional[TrainOptions] = None, progress: Optional[Callable[[dict], None]] = None):
        o = options or TrainOptions()
        o.validate()
        self.denoiser = denoiser
        self.spec = get_solver(solver)
        learn = effective_learn(o.learn, self.spec)
        if learn != tuple(o.learn):  # a stock sampler: the time steps take the decoupled phase's budget too
            o = replace(o, learn=learn, iters_phase1=o.iters_phase1 + o.iters_phase2)
            log.info("solver %s evaluates the network on its own grid: learning the time steps only, for "
                     "%d iterations", self.spec.name, o.iters_phase1)
        self.opt = o
        self.solver = self.spec.name
        self.n_steps = self.spec.steps_for_nfe(nfe)
        self.solver_options = dict(solver_options or {})
        self.solver_options["order"] = self.spec.validate(self.n_steps, self.solver_options.get("order"))
        self.nfe = int(nfe)
        self.schedule = denoiser.schedule
        self.device = getattr(denoiser, "device", torch.device("cpu"))
        self.dtype = getattr(denoiser, "dtype", torch.float32)
        self.phases = plan_phases(o)
        if "coefficients" in o.learn:  # refuses a solver without multistep weights before anything runs
            table = self.spec.coefficients(torch.tensor([2.0, 1.0], dtype=torch.float64), **self.solver_options)
            if table.history < 2 and table.corr is None:
                raise ConfigError(f"solver '{self.solver}' combines no previous evaluations: it has no coefficients "
                                  "to learn; use dpmpp, unipc, ipndm or deis of order >= 2")
        self.train, self.val = split_pairs(noises, targets, cond, o.val_fraction, self.device, self.dtype)
        self.n_train = len(self.train)
        self.eps = self.train.eps.clone()  # the soft-teacher-forced noises
        self.dim = int(math.prod(noises.shape[1:]))
        self.radius = float(o.r) if o.r is not None else default_radius(o.gamma, self.dim, self.nfe)
        self.shift_lr = float(o.shift_lr) if o.shift_lr is not None else default_shift_lr(self.nfe)
        self.loss_name, self.loss_fn = resolve_loss(o.loss, targets.shape[1], self.device, o.lpips_weights)
        ckpt = _num_params(denoiser) > 1_000_000 if o.grad_checkpoint == "auto" else bool(o.grad_checkpoint)
        self.net = _Checkpointed(denoiser) if ckpt else denoiser
        self.grad_checkpoint = bool(ckpt)
        self.progress = progress
        self.sigma_max = float(self.schedule.sigma_max)
        self.gen = torch.Generator().manual_seed(int(o.seed))
        self.param: Optional[ScheduleParameterization] = None
        self.coef: Optional[CoefficientParameterization] = None
        self.baselines: dict[str, dict] = {}
        self.init_name, self.init_val = "", float("inf")
        self.perm: Optional[torch.Tensor] = None  # the current epoch's order and position in it
        self.batch_pos = 0
        self.phase = 0                            # index into self.phases (len = done)
        self.iteration = self.phase_iter = self.bad = 0
        self.history: list[dict] = []
        self.best_val, self.best_state, self.best_phase = float("inf"), {}, -1
        self.after_phase: dict[str, tuple[float, Sampler]] = {}  # phase -> (best validation, best sampler) at its end
        self.stopped = ""
        self.elapsed = 0.0
        self.optimizers: dict[str, Any] = {}

    # -- building blocks ----------------------------------------------------------------------
    @property
    def eps_orig(self) -> torch.Tensor:
        return self.train.eps

    @property
    def eps_val(self) -> torch.Tensor:
        return self.val.eps

    def start(self) -> None:
        """Score the baselines, choose the start and build the parameters (no-op once started)."""
        if self.param is not None:
            return
        o = self.opt

        def score(sig):
            sampler = self._sampler(sig.to(self.device), None, None)
            return float(self.evaluate(sampler, self.train).mean()), float(self.evaluate(sampler, self.val).mean())

        self.init_name, init_sigmas, self.baselines = choose_init(score, self.schedule, self.n_steps, o.init,
                                                                  o.init_candidates)
        self._build(init_sigmas)
        self.init_val = self.best_val = self.baselines[self.init_name]["val"]
        self.best_state, self.best_phase = self._param_state(), -1
        self._make_optimizers()

    def _build(self, init_sigmas: torch.Tensor) -> None:
        o = self.opt
        self.param = ScheduleParameterization(self.schedule, init_sigmas, o.param, o.win_rate, o.offset_units,
                                              o.eval_scale).to(self.device)
        if "coefficients" in o.learn:
            base = self.spec.coefficients(init_sigmas.to(self.device), **self.solver_options)
            self.coef = CoefficientParameterization.for_table(base, o.coefficient_history,
                                                              o.coefficient_constraint).to(self.device)

    def _make_optimizers(self) -> None:
        """One optimiser per learned tensor, named as in :meth:`_params` (its group is the name's first part)."""
        o = self.opt
        self.optimizers = {}
        for name, p in self._params().items():
            group = name.split(".")[0]
            if group == "offsets" and o.offsets_optimizer == "sgd":
                self.optimizers[name] = SGD(p, lr=o.lr_offsets / self.nfe)
            elif group == "coefficients" and o.coefficients_optimizer == "adam":
                self.optimizers[name] = Adam(p, lr=o.lr_coefficients, decay=o.coefficient_decay)
            elif group == "coefficients":
                self.optimizers[name] = RMSpropMomentum(p, lr=o.lr_coefficients, momentum=o.momentum,
                                                        decay=o.coefficient_decay)
            else:
                lr = o.lr if group == "steps" else o.lr_offsets
                self.optimizers[name] = RMSpropMomentum(p, lr=lr, momentum=o.momentum)

    def _active(self, phase: Phase) -> list[str]:
        """Optimiser names of a phase's groups."""
        return [name for name in self.optimizers if name.split(".")[0] in phase.groups]

    def _params(self) -> dict[str, torch.Tensor]:
        """Every learnable tensor by name: ``steps``, ``offsets``, ``coefficients.<k>``."""
        out = {"steps": self.param.logits, "offsets": self.param.offsets}
        if self.coef is not None:
            out.update({f"coefficients.{i}": p for i, p in enumerate(self.coef.parameters_list())})
        return out

    def _param_state(self) -> dict:
        return {k: p.detach().clone() for k, p in self._params().items()}

    def _load_param_state(self, st: dict) -> None:
        with torch.no_grad():
            for k, p in self._params().items():
                p.copy_(st[k])

    def _sampler(self, sigmas, sigmas_eval, phase: Optional[Phase]) -> Sampler:
        """The student on these grids; ``phase`` decides decoupling and learned coefficients (None: neither)."""
        decoupled = phase is not None and phase.decoupled
        scales = self.param.eval_scales(sigmas, sigmas_eval) if decoupled else None
        table = None
        if phase is not None and phase.coefficients:
            table = self.coef.apply(self.spec.coefficients(sigmas, **self.solver_options))
        return Sampler(self.solver, sigmas, self.solver_options, sigmas_eval if decoupled else None, scales,
                       self.opt.noise_estimate, table)

    def _current(self, phase: Optional[Phase], grad: bool = True) -> Sampler:
        with torch.set_grad_enabled(grad):
            sig, sig_eval = self.param(phase is not None and phase.decoupled)
            return self._sampler(sig, sig_eval, phase)

    def student(self, eps: torch.Tensor, cond, sampler: Sampler, net=None) -> torch.Tensor:
        """Decoded student images for unit noises ``eps``."""
        x = eps * self.sigma_max
        out = sampler.solve(net or self.denoiser, x, cond, check=False)
        return self.denoiser.decode(out) if hasattr(self.denoiser, "decode") else out

    @torch.no_grad()
    def evaluate(self, sampler: Sampler, pairs: Pairs) -> torch.Tensor:
        """Per-sample hard loss ``[n]`` of ``sampler`` on ``pairs`` from their true noises."""
        bs = self.opt.val_batch_size or len(pairs)
        losses = []
        for i in range(0, len(pairs), bs):
            part = pairs.rows(slice(i, i + bs))
            out = self.student(part.eps, part.cond, sampler)
            losses.append(self.loss_fn(out.float(), part.y.float()).double())
        return torch.cat(losses)

    # -- one iteration ------------------------------------------------------------------------
    def _step(self, idx: torch.Tensor, phase: Phase) -> dict:
        o = self.opt
        eps_in = self.eps[idx].detach().clone().requires_grad_(self.radius > 0)
        batch = self.train.rows(idx)
        out = self.student(eps_in, batch.cond, self._current(phase), net=self.net)
        loss_vec = self.loss_fn(out.float(), batch.y.float())
        loss = loss_vec.mean()
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss became {loss.item()} at iteration {self.iteration}; "
                                 "lower train.lr or check the model's outputs "
                                 "(best_values() holds the best schedule so far)")
        refs = self._params()
        zero_grad(*refs.values())
        loss.backward()
        for name in self._active(phase):
            torch.nn.utils.clip_grad_norm_([refs[name]], o.grad_clip)
            self.optimizers[name].step()
        accepted = 0
        if self.radius > 0 and eps_in.grad is not None:
            proposal = propose_move(eps_in.detach(), eps_in.grad, batch.eps, self.radius, self.shift_lr)
            with torch.no_grad():
                new_loss = self.loss_fn(self.student(proposal, batch.cond, self._current(phase, False)).float(),
                                        batch.y.float())
            updated, mask = accept_moves(self.eps[idx], proposal, new_loss, loss_vec.detach())
            self.eps[idx] = updated
            accepted = int(mask.sum())
        rec = {"loss": float(loss.detach()), "accepted": accepted}
        if phase.decoupled:
            rec["offset_frac"] = float(self.param.window_fractions().max())
        if phase.coefficients:
            rec["coef_max"] = self.coef.magnitude()
        return rec

    def _validate(self, phase: Phase) -> dict:
        val = float(self.evaluate(self._current(phase, False), self.val).mean())
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
                for name in self._active(phase):
                    floor = self.opt.min_lr * (1e-2 if name == "offsets" else 1.0)
                    opt = self.optimizers[name]
                    opt.lr = max(opt.lr * self.opt.lr_decay, floor)
        return {"val": val, "best_val": self.best_val, "improved": improved}

    def batch_size(self, phase: Phase) -> int:
        """Training pairs per iteration: ``batch_size_coefficients`` (when > 0) in a phase that runs the learned
        coefficients, ``batch_size`` otherwise; at most the training split."""
        o = self.opt
        bs = o.batch_size_coefficients if phase.coefficients and o.batch_size_coefficients else o.batch_size
        return max(1, min(int(bs), self.n_train))

    def _phase_done(self, phase: Phase) -> bool:
        first = self.optimizers[self._active(phase)[0]]
        return self.phase_iter >= phase.budget or first.lr <= self.opt.min_lr

    # -- main loop ----------------------------------------------------------------------------
    def run(self, checkpoint: Optional[Callable[["LD3Trainer"], None]] = None) -> LearnedSchedule:
        """Train through every phase; calls ``checkpoint(self)`` after each validation."""
        self.start()
        start = time.perf_counter() - self.elapsed
        while self.phase < len(self.phases):
            phase = self.phases[self.phase]
            if self._phase_done(phase):
                self.phase, self.phase_iter, self.bad = self.phase + 1, 0, 0
                self._load_param_state(self.best_state)
                self.after_phase[phase.name] = (self.best_val, self._best_sampler())
                self._make_optimizers()
                continue
            bs = self.batch_size(phase)
            if self.perm is None or self.batch_pos + bs > self.n_train:  # a new epoch (drop the ragged tail)
                self.perm = torch.randperm(self.n_train, generator=self.gen)
                self.batch_pos = 0
            idx = self.perm[self.batch_pos:self.batch_pos + bs].to(self.device)
            self.batch_pos += bs
            rec = self._step(idx, phase)
            self.iteration += 1
            self.phase_iter += 1
            rec.update(iteration=self.iteration, phase=phase.name, lr=self.optimizers[self._active(phase)[0]].lr,
                       seconds=time.perf_counter() - start)
            every = self.opt.val_every_coefficients if phase.coefficients else self.opt.val_every
            if self.iteration % max(1, every) == 0:
                rec.update(self._validate(phase))
            self.history.append(rec)
            self.elapsed = time.perf_counter() - start
            if self.progress is not None:
                self.progress(rec)
            if "val" in rec and checkpoint is not None:
                checkpoint(self)
        self.stopped = self.stopped or "budget"
        self._load_param_state(self.best_state)
        self.elapsed = time.perf_counter() - start
        return self._result()

    def _best_phase(self) -> Optional[Phase]:
        return self.phases[self.best_phase] if self.best_phase >= 0 else None

    def _best_sampler(self) -> Sampler:
        """The sampler of the current parameters as the best phase runs them (detached, on the CPU)."""
        return self._current(self._best_phase(), grad=False).detached()

    def _result(self) -> LearnedSchedule:
        o, phase = self.opt, self._best_phase()
        decoupled = phase is not None and phase.decoupled
        return LearnedSchedule(
            sampler=self._best_sampler(), nfe=self.nfe, param=o.param, loss=self.loss_name, init=self.init_name,
            init_val=self.init_val, best_val=self.best_val, learn=tuple(o.learn),
            best_phase=phase.name if phase is not None else "init",
            baselines={k: {"train": v["train"], "val": v["val"]} for k, v in self.baselines.items()},
            history=self.history, iterations=self.iteration, seconds=self.elapsed, radius=self.radius,
            stopped=self.stopped, eval_scale=o.eval_scale, offset_units=o.offset_units,
            window_fractions=self.param.window_fractions().tolist() if decoupled else [],
            after_phase={k: v for k, (v, _) in self.after_phase.items()},
            phase_samplers={k: s for k, (_, s) in self.after_phase.items()})

    def best_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, sigmas_eval) of the best schedule so far, without disturbing training."""
        current = self._param_state()
        self._load_param_state(self.best_state)
        phase = self._best_phase()
        sig, ev = self.param.values(phase is not None and phase.decoupled)
        self._load_param_state(current)
        return sig.cpu(), ev.cpu()

    # -- resumable state ----------------------------------------------------------------------
    def state_tensors(self) -> dict:
        """Everything needed to resume, as tensors (saved with safetensors) ..."""
        self.start()
        t = {"init_sigmas": torch.as_tensor(self.baselines[self.init_name]["sigmas"], dtype=torch.float64),
             "eps": self.eps, "gen_state": self.gen.get_state()}
        t.update({f"param.{k}": v.detach() for k, v in self._params().items()})
        t.update({f"best.{k}": v for k, v in self.best_state.items()})
        if self.perm is not None:
            t["perm"] = self.perm
        for name, optim in self.optimizers.items():
            for k, v in optim.state().items():
                t[f"opt.{name}.{k}"] = v.detach()
        for name, (_, sampler) in self.after_phase.items():
            t.update({f"after.{name}.{k}": v for k, v in sampler.tensors().items()})
        return t

    def state_info(self) -> dict:
        """... and plain data (saved as JSON)."""
        return {"phase": self.phase, "iteration": self.iteration, "phase_iter": self.phase_iter, "bad": self.bad,
                "batch_pos": self.batch_pos, "best_val": self.best_val, "best_phase": self.best_phase,
                "elapsed": self.elapsed, "lrs": {k: v.lr for k, v in self.optimizers.items()},
                "history": self.history, "init": self.init_name, "init_val": self.init_val,
                "baselines": self.baselines, "phases": [p.name for p in self.phases],
                "after_phase": {k: {"best_val": v, "sampler": s.plain()} for k, (v, s) in self.after_phase.items()}}

    def load_state(self, tensors: dict, info: dict) -> None:
        """Restore a state written by :meth:`state_tensors` / :meth:`state_info` (no baseline is scored again)."""
        if info.get("phases") != [p.name for p in self.phases]:
            raise ConfigError(f"the saved training state has phases {info.get('phases')}, this run "
                              f"{[p.name for p in self.phases]}")
        dev = self.device
        self.baselines, self.init_name, self.init_val = dict(info["baselines"]), info["init"], info["init_val"]
        self._build(tensors["init_sigmas"].to(torch.float64))
        self._load_param_state({k: tensors[f"param.{k}"].to(dev) for k in self._params()})
        self.best_state = {k: tensors[f"best.{k}"].to(dev) for k in self._params()}
        self.eps = tensors["eps"].to(dev, self.dtype)
        self.gen.set_state(tensors["gen_state"])
        self.perm = tensors["perm"].long() if "perm" in tensors else None
        self.batch_pos = int(info.get("batch_pos", 0))
        self.phase, self.iteration, self.phase_iter = info["phase"], info["iteration"], info["phase_iter"]
        self.bad, self.best_val, self.best_phase = info["bad"], info["best_val"], info["best_phase"]
        self.elapsed, self.history = info.get("elapsed", 0.0), list(info.get("history", []))
        self.after_phase = {}
        for name, rec in info.get("after_phase", {}).items():
            prefix = f"after.{name}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            self.after_phase[name] = (rec["best_val"], Sampler.from_tensors(own, rec["sampler"]))
        self._make_optimizers()
        for name, optim in self.optimizers.items():
            optim.lr = info["lrs"][name]
            state = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
            if state:
                optim.load(state)


def learn_schedule(denoiser, solver: str, nfe: int, noises: torch.Tensor, targets: torch.Tensor,
                   schedule: str = "auto", cond: Optional[torch.Tensor] = None,
                   solver_options: Optional[dict] = None, learn=("steps", "offsets"), **options) -> LearnedSchedule:
    """Learn an LD3 schedule (and, with ``"coefficients"`` in ``learn``, the solver's coefficients) in one call.

    Args:
        denoiser: sigma-space denoiser ``D(x, sigma[B], cond) -> x0`` with ``schedule`` and ``decode``.
        solver: solver name (euler, heun, dpmpp, unipc, ipndm, deis); ``solver_options`` its options.
        nfe: student NFE.
        noises: ``[n, C, H, W]`` unit-variance noises; targets: ``[n, ...]`` teacher images in [-1, 1].
        schedule: initialisation, ``"auto"`` (best baseline on the training split) or a baseline name.
        learn: any subset of ``("steps", "offsets", "coefficients")``.
        **options: any :class:`TrainOptions` field (``batch_size``, ``r``, ``param``, ``iters_phase3`` ...).

    Returns:
        :class:`LearnedSchedule`; ``result.solve(denoiser, x, cond)`` runs exactly what was learned from
        ``x`` (the state at ``sigma_max``).
    """
    opts = TrainOptions.from_dict({**options, "init": schedule, "learn": tuple(learn)})
    return LD3Trainer(denoiser, solver, solver_options or {}, nfe, noises, targets, cond, opts).run()
