"""The LD3 trainer: learn a solver's time steps (and, beyond LD3, its coefficients) through the solver.

Objective (Tong et al., ICLR 2025): for teacher pairs ``(eps_n, y_n)`` (input noise, teacher image),
minimise ``mean_n loss(decode(student(sigma_max * eps'_n)), y_n)`` where each ``eps'_n`` may move inside
a small ball around ``eps_n`` (soft teacher forcing, :mod:`ld3_cli.ld3.soft_teacher`).  What the student
learns is ``train.learn``, any subset of

* ``steps``: the schedule logits (:class:`~ld3_cli.ld3.parameterization.ScheduleParameterization`);
* ``offsets``: the decoupled evaluation times (LD3's phase 2);
* ``coefficients``: corrections to the solver's multistep weights
  (:class:`~ld3_cli.ld3.coefficients.CoefficientParameterization`, in the spirit of S4S);
* ``residual``: a per-step spatial network added to each step (:class:`~ld3_cli.solvers.residual.ResidualOperator`,
  SpanLift's idea), trained last (phase 4: ``iters_residual`` iterations of ``batch_size_residual`` pairs,
  Adam at ``lr_residual``, on ``loss_residual``), alone or, with ``residual_joint > 0``, with the time steps,
  offsets and coefficients at their rates times ``residual_joint``; it needs ``coefficients`` (it trains on the
  learned solver).

Training runs in phases (:func:`plan_phases`): ``steps`` (``iters_phase1``), then ``steps + offsets``
(``iters_phase2``) -- exactly LD3 -- then the coefficients (``iters_phase3`` iterations of
``batch_size_coefficients`` pairs), jointly with what else is learned or, with ``alternate_rounds = k > 0``,
in ``k`` rounds that alternate coefficients alone and time steps alone (S4S-Alt); then the residual.  Every phase
starts from the best parameters so far with fresh optimisers, except those ``steps_rates_offsets`` (phase 2) or
``schedule_rates_coefficients`` (phase 3) carry on from the phase before.

Optimisation follows the paper: RMSprop (lr 5e-3, momentum 0.9) on the logits; the offsets with
RMSprop (ld3's default, in window units) or the paper's SGD (``lr_offsets / NFE``); Adam (or RMSprop,
``coefficients_optimizer``; optionally with a decoupled decay, ``coefficient_decay``) on the coefficient
corrections; UniPC's gradient exact or, with ``rho_gradient=stopped``, as the paper's code computes it
(:func:`~ld3_cli.solvers.unipc.rho_gradient`); gradient-norm clipping at 1 per group; learning-rate decay by
``lr_decay`` after ``patience`` validations without improvement (restoring the best parameters); a phase ends at
its budget or when its lead group's learning rate reaches ``min_lr`` (:meth:`LD3Trainer._lead`).  Differences, for
speed or rigour: validation uses the *hard* loss from the true noises in one batch (what sampling sees), the
initial schedule is a validation candidate (the result is never worse than it on validation), and
each solver step can be gradient-checkpointed.

Everything a run changes is one :class:`~ld3_cli.ld3.state.TrainerState` (``trainer.state``), saved and
restored whole (:meth:`LD3Trainer.dump_state`, :meth:`LD3Trainer.load_state`), so an interrupted run
resumes bit-identically.

Use :func:`learn_schedule` from Python; the ``ld3 train`` stage wraps :class:`LD3Trainer` with the store.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError, NumericalError
from ..solvers import get_solver
from ..solvers.sampler import Sampler
from ..solvers.unipc import rho_gradient
from ..utils.model_size import SMALL_MODEL_PARAMETERS, parameter_count
from .coefficients import CoefficientParameterization
from .losses import resolve_loss
from .optim import Adam, SGD, RMSpropMomentum, zero_grad
from .options import TrainOptions, effective_learn
from .parameterization import ScheduleParameterization
from ..solvers.residual import ResidualOperator
from .phases import Phase, plan_phases, schedule_phase_count
from .restarts import best_restart
from .result import LearnedSchedule
from .soft_teacher import accept_moves, default_radius, default_shift_lr, propose_move
from .start import Pairs, choose_init, split_pairs
from .state import TrainerState, decode_state, encode_state

log = logging.getLogger(__name__)

# The offsets' learning rate decays to min_lr times this, below the other groups' floor (the paper's code: 1e-6 against
# 5e-5), so they keep moving until the first group's rate, which ends the phase, reaches min_lr.
OFFSETS_MIN_LR_FACTOR = 1e-2


class _Checkpointed(nn.Module):
    """Recompute the denoiser in the backward pass instead of storing its activations."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, cond=None):
        return torch.utils.checkpoint.checkpoint(self.inner, x, sigma, cond, use_reentrant=False)


def _grad_checkpointing(denoiser, option) -> bool:
    """``train.grad_checkpoint``: ``"auto"`` checkpoints every model that is not small, else the flag."""
    return parameter_count(denoiser) >= SMALL_MODEL_PARAMETERS if option == "auto" else bool(option)


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

    Conventions: ``state`` (a :class:`~ld3_cli.ld3.state.TrainerState`) holds everything a run changes;
    the rest is fixed at construction (``options``, the ``train_pairs`` / ``val_pairs`` split, the solver)
    or built from the state: ``grid`` (the schedule's parameterization), ``coefficients`` (the learned
    coefficient corrections, ``None`` unless learned) and ``optimizers``, which update the state's
    tensors in place.  Learned tensors and their optimisers share a name: ``steps``, ``offsets``,
    ``coefficients.<k>``, and the part before the first dot is the group a phase moves.
    """

    def __init__(self, denoiser, solver: str, solver_options: dict, nfe: int, noises: torch.Tensor,
                 targets: torch.Tensor, cond: Optional[torch.Tensor] = None,
                 options: Optional[TrainOptions] = None, progress: Optional[Callable[[dict], None]] = None):
        o = options or TrainOptions()  # checked when made: at the CLI's boundary or in learn_schedule
        self.denoiser = denoiser
        self.spec = get_solver(solver)
        learn = effective_learn(o.learn, self.spec)
        if learn != tuple(o.learn):  # a stock sampler: the time steps take the decoupled phase's budget too
            o = o.replace(learn=learn, iters_phase1=o.iters_phase1 + o.iters_phase2)
            log.info("solver %s evaluates the network on its own grid: learning the time steps only, for "
                     "%d iterations", self.spec.name, o.iters_phase1)
        self.options = o
        self.solver = self.spec.name
        self.solver_options = dict(solver_options or {})
        resolved = self.spec.resolve_options(self.solver_options, values=False)  # values: checked where they entered
        self.n_steps = self.spec.steps_for(nfe, resolved)
        self.solver_options["order"] = self.spec.validate(self.n_steps, resolved["order"], resolved)
        self.nfe = int(nfe)
        self.schedule = denoiser.schedule
        self.device = getattr(denoiser, "device", torch.device("cpu"))
        self.dtype = getattr(denoiser, "dtype", torch.float32)
        self.phases = plan_phases(o)
        if {"coefficients", "residual"} & set(o.learn):  # a solver without multistep weights is refused at once
            self.spec.check_learnable(resolved)
        self.train_pairs, self.val_pairs = split_pairs(noises, targets, cond, o.val_fraction, self.device, self.dtype)
        self.n_train = len(self.train_pairs)
        noise_dim = int(math.prod(noises.shape[1:]))
        self.radius = float(o.r) if o.r is not None else default_radius(o.gamma, noise_dim, self.nfe)
        self.shift_lr = float(o.shift_lr) if o.shift_lr is not None else default_shift_lr(self.nfe)
        self.loss_name, self.loss_fn = resolve_loss(o.loss, targets.shape[1], self.device, o.lpips_weights)
        # phase 4 may train on another loss; validation (and so what is kept) always uses train.loss
        self.residual_loss_fn = self.loss_fn if o.loss_residual in ("same", o.loss) else resolve_loss(
            o.loss_residual, targets.shape[1], self.device, o.lpips_weights)[1]
        self.grad_checkpoint = _grad_checkpointing(denoiser, o.grad_checkpoint)
        self.train_network = _Checkpointed(denoiser) if self.grad_checkpoint else denoiser  # what training runs
        self.progress = progress
        self.sigma_max = float(self.schedule.sigma_max)
        self.grid: Optional[ScheduleParameterization] = None
        self.coefficients: Optional[CoefficientParameterization] = None
        self.residual: Optional[ResidualOperator] = None
        self.optimizers: dict = {}
        self.state = self._fresh_state()

    def _fresh_state(self) -> TrainerState:
        """The state of a run that has not started."""
        return TrainerState(phase_names=[p.name for p in self.phases], train_noises=self.train_pairs.eps.clone(),
                            generator=torch.Generator().manual_seed(int(self.options.seed)))

    # -- building blocks ----------------------------------------------------------------------
    def start(self) -> None:
        """Score the baselines, choose the start and build the parameters (no-op once started)."""
        if self.grid is not None:
            return
        o, s = self.options, self.state

        def score(sig):
            sampler = self._sampler(sig.to(self.device), None, None)
            return (float(self.evaluate(sampler, self.train_pairs).mean()),
                    float(self.evaluate(sampler, self.val_pairs).mean()))

        s.init_name, init_sigmas, s.baselines = choose_init(score, self.schedule, self.n_steps, o.init,
                                                            o.init_candidates)
        self._build(init_sigmas)
        s.init_val = s.best_val = s.baselines[s.init_name]["val"]
        s.best_params, s.best_phase = self._param_copies(), -1
        self._make_optimizers()

    def _build(self, init_sigmas: torch.Tensor) -> None:
        """The parameterizations of the learned tensors, starting at ``init_sigmas``; ``state.params`` holds
        their tensors."""
        o = self.options
        self.grid = ScheduleParameterization(self.schedule, init_sigmas, o.param, o.win_rate, o.offset_units,
                                             o.eval_scale, o.decouple_first).to(self.device)
        params = {"steps": self.grid.logits, "offsets": self.grid.offsets}
        base = self.spec.coefficients(init_sigmas.to(self.device), **self.solver_options) \
            if {"coefficients", "residual"} & set(o.learn) else None
        history = base.history if base is not None else 0
        if "coefficients" in o.learn:
            self.coefficients = CoefficientParameterization.for_table(base, o.coefficient_history,
                                                                      o.coefficient_constraint).to(self.device)
            params.update({f"coefficients.{i}": p for i, p in enumerate(self.coefficients.parameters_list())})
            history = self.coefficients.history
        if "residual" in o.learn:  # its hidden layers start from the run's seed (a restart's, in a restart)
            first = max(0, base.steps - int(o.residual_steps)) if o.residual_steps else 0
            self.residual = ResidualOperator(base.steps, int(self.train_pairs.eps.shape[1]), history, o.residual_width,
                                             torch.Generator().manual_seed(int(o.seed)), first).to(self.device)
            params.update({f"residual.{i}": p for i, p in enumerate(self.residual.weights)})
        self.state.params = params

    def _make_optimizers(self, saved: Optional[dict] = None) -> None:
        """One optimiser per learned tensor, fresh (at the options' learning rates) or continuing from ``saved``
        (name -> optimiser state); ``state.optimizers`` holds their states."""
        self.optimizers = {name: self._new_optimizer(name, p) for name, p in self.state.params.items()}
        if saved is not None:
            if set(saved) != set(self.optimizers):
                raise ConfigError(f"the saved training state has optimisers {sorted(saved)}, this run "
                                  f"{sorted(self.optimizers)}")
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(saved[name])
        self.state.optimizers = {name: optimizer.state for name, optimizer in self.optimizers.items()}

    def _new_optimizer(self, name: str, p: torch.Tensor):
        o, group = self.options, name.split(".")[0]
        if group == "offsets" and o.offsets_optimizer == "sgd":
            return SGD(p, lr=o.lr_offsets / self.nfe)
        if group == "residual":
            return Adam(p, lr=o.lr_residual, decay=o.residual_decay)
        if group == "coefficients" and o.coefficients_optimizer == "adam":
            return Adam(p, lr=o.lr_coefficients, decay=o.coefficient_decay)
        if group == "coefficients":
            return RMSpropMomentum(p, lr=o.lr_coefficients, momentum=o.momentum, decay=o.coefficient_decay)
        return RMSpropMomentum(p, lr=o.lr if group == "steps" else o.lr_offsets, momentum=o.momentum)

    def _active(self, phase: Phase) -> list[str]:
        """Names of the learned tensors a phase moves."""
        return [name for name in self.optimizers if name.split(".")[0] in phase.groups]

    def _param_copies(self) -> dict:
        return {k: p.detach().clone() for k, p in self.state.params.items()}

    def _set_params(self, values: dict) -> None:
        with torch.no_grad():
            for k, p in self.state.params.items():
                p.copy_(values[k])

    def _sampler(self, sigmas, sigmas_eval, phase: Optional[Phase]) -> Sampler:
        """The student on these grids; ``phase`` decides decoupling and learned coefficients (None: neither)."""
        decoupled = phase is not None and phase.decoupled
        scales = self.grid.eval_scales(sigmas, sigmas_eval) if decoupled else None
        table = None
        if phase is not None and (phase.coefficients or phase.residual):  # the residual runs on the solver's table
            table = self.spec.coefficients(sigmas, **self.solver_options)
            table = self.coefficients.apply(table) if phase.coefficients else table
        residual = self.residual if phase is not None and phase.residual else None
        return Sampler(self.solver, sigmas, self.solver_options, sigmas_eval if decoupled else None, scales,
                       self.options.noise_estimate, table, residual)

    def _student_sampler(self, phase: Optional[Phase], grad: bool = True) -> Sampler:
        """The student on the current parameters, as ``phase`` runs them."""
        with torch.set_grad_enabled(grad):
            sig, sig_eval = self.grid(phase is not None and phase.decoupled)
            return self._sampler(sig, sig_eval, phase)

    def student(self, eps: torch.Tensor, cond, sampler: Sampler, net=None) -> torch.Tensor:
        """Decoded student images for unit noises ``eps``."""
        x = eps * self.sigma_max
        out = sampler.solve(net or self.denoiser, x, cond, check=False)
        return self.denoiser.decode(out) if hasattr(self.denoiser, "decode") else out

    @torch.no_grad()
    def evaluate(self, sampler: Sampler, pairs: Pairs) -> torch.Tensor:
        """Per-sample hard loss ``[n]`` of ``sampler`` on ``pairs`` from their true noises."""
        bs = self.options.val_batch_size or len(pairs)
        losses = []
        for i in range(0, len(pairs), bs):
            part = pairs.rows(slice(i, i + bs))
            out = self.student(part.eps, part.cond, sampler)
            losses.append(self.loss_fn(out.float(), part.y.float()).double())
        return torch.cat(losses)

    # -- one iteration ------------------------------------------------------------------------
    def _next_batch(self, bs: int) -> torch.Tensor:
        """Indices of the next ``bs`` training pairs; a new epoch (a new order) when fewer are left."""
        s = self.state
        if s.epoch_order is None or s.batch_position + bs > self.n_train:  # the ragged tail is dropped
            s.epoch_order = torch.randperm(self.n_train, generator=s.generator)
            s.batch_position = 0
        idx = s.epoch_order[s.batch_position:s.batch_position + bs].to(self.device)
        s.batch_position += bs
        return idx

    def _step(self, idx: torch.Tensor, phase: Phase) -> dict:
        """One update of the phase's tensors on the training pairs ``idx``; the iteration's record."""
        s = self.state
        eps_in = s.train_noises[idx].detach().clone().requires_grad_(self.radius > 0)
        batch = self.train_pairs.rows(idx)
        with rho_gradient(self.options.rho_gradient):
            out = self.student(eps_in, batch.cond, self._student_sampler(phase), net=self.train_network)
        loss_vec = self._training_loss(phase)(out.float(), batch.y.float())
        loss = loss_vec.mean()
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss became {loss.item()} at iteration {s.iteration}; "
                                 "lower train.lr or check the model's outputs "
                                 "(best_values() holds the best schedule so far)")
        zero_grad(*s.params.values())
        loss.backward()
        for name in self._active(phase):
            torch.nn.utils.clip_grad_norm_([s.params[name]], self.options.grad_clip)
            self.optimizers[name].step()
        rec = {"loss": float(loss.detach()), "accepted": self._move_noises(idx, eps_in, batch, loss_vec, phase)}
        if phase.decoupled:
            rec["offset_frac"] = float(self.grid.window_fractions().max())
        if phase.coefficients:
            rec["coef_max"] = self.coefficients.magnitude()
        if phase.residual:
            rec["residual_max"] = self.residual.magnitude()
        return rec

    def _training_loss(self, phase: Phase):
        """The per-sample loss a phase trains on: ``train.loss_residual`` in phase 4, ``train.loss`` before."""
        return self.residual_loss_fn if phase.residual else self.loss_fn

    def _move_noises(self, idx: torch.Tensor, eps_in: torch.Tensor, batch: Pairs, loss_vec: torch.Tensor,
                     phase: Phase) -> int:
        """Soft teacher forcing: move the batch's noises along their gradient where that lowers their loss
        (inside the ball around the true noises); how many moved."""
        if self.radius <= 0 or eps_in.grad is None:
            return 0
        s = self.state
        proposal = propose_move(eps_in.detach(), eps_in.grad, batch.eps, self.radius, self.shift_lr)
        with torch.no_grad():
            out = self.student(proposal, batch.cond, self._student_sampler(phase, False))
            new_loss = self._training_loss(phase)(out.float(), batch.y.float())
        updated, mask = accept_moves(s.train_noises[idx], proposal, new_loss, loss_vec.detach())
        s.train_noises[idx] = updated
        return int(mask.sum())

    def _validate(self, phase: Phase) -> dict:
        """Validation loss of the current parameters; keeps the best, and decays the rates when patience runs out."""
        s = self.state
        val = float(self.evaluate(self._student_sampler(phase, False), self.val_pairs).mean())
        if not math.isfinite(val):
            raise NumericalError(f"validation loss became {val} at iteration {s.iteration}; "
                                 "check the model's outputs (best_values() holds the best schedule so far)")
        improved = val < s.best_val
        if improved:
            s.best_val, s.best_params, s.best_phase, s.stale_validations = val, self._param_copies(), s.phase_index, 0
        else:
            s.stale_validations += 1
            if s.stale_validations >= self.options.patience:
                self._decay_learning_rates(phase)
        return {"val": val, "best_val": s.best_val, "improved": improved}

    def _decay_learning_rates(self, phase: Phase) -> None:
        """Patience ran out: back to the best parameters, the phase's learning rates times ``lr_decay`` (floored)."""
        o = self.options
        self._set_params(self.state.best_params)
        self.state.stale_validations = 0
        for name in self._active(phase):
            floor = o.min_lr * (OFFSETS_MIN_LR_FACTOR if name == "offsets" else 1.0)
            optimizer = self.optimizers[name]
            optimizer.lr = max(optimizer.lr * o.lr_decay, floor)

    def batch_size(self, phase: Phase) -> int:
        """Training pairs per iteration: ``batch_size_residual`` (when > 0) in phase 4, ``batch_size_coefficients``
        (when > 0) in a phase that runs the learned coefficients, ``batch_size`` otherwise; at most the training
        split."""
        o = self.options
        bs = o.batch_size_coefficients if phase.coefficients and o.batch_size_coefficients else o.batch_size
        if phase.residual:
            bs = o.batch_size_residual or o.batch_size
        return max(1, min(int(bs), self.n_train))

    def _lead(self, phase: Phase):
        """The optimiser whose rate a phase reports and ends on: its first group's (the time steps in LD3's phases,
        the coefficients in phase 3, the residual in phase 4)."""
        active = self._active(phase)
        return self.optimizers[([name for name in active if name.split(".")[0] == phase.groups[0]] or active)[0]]

    def _phase_done(self, phase: Phase) -> bool:
        return self.state.phase_iteration >= phase.budget or self._lead(phase).lr <= self.options.min_lr

    def _next_phase(self) -> None:
        """The phase change: record the ended phase's best validation and sampler, then start the next phase
        from the best parameters so far, with fresh optimisers (the options' learning rates) but those it carries
        (:meth:`_carried`; the groups after the lead at their rates times the phase's ``rate_factor``), and its
        iteration and patience counters at zero.  The best validation so far carries
        over."""
        s = self.state
        ended = self.phases[s.phase_index]
        s.phase_index, s.phase_iteration, s.stale_validations = s.phase_index + 1, 0, 0
        self._set_params(s.best_params)
        s.phase_ends[ended.name] = {"best_val": s.best_val, "sampler": self._best_sampler()}
        ending = dict(self.optimizers)
        self._make_optimizers()
        starting = self.phases[s.phase_index] if s.phase_index < len(self.phases) else None
        names, mode = self._carried(starting)
        for name in names:  # the same optimisers go on: their running averages, and their rates unless "averages"
            fresh_rate = self.optimizers[name].lr
            self.optimizers[name] = ending[name]
            s.optimizers[name] = ending[name].state
            if mode == "averages":
                self.optimizers[name].lr = fresh_rate
        if starting is not None and starting.rate_factor != 1.0:  # a joint phase 4: what came before, slower
            for name in self._active(starting):
                if name.split(".")[0] != starting.groups[0]:
                    self.optimizers[name].lr *= starting.rate_factor

    def _carried(self, starting: Optional[Phase]) -> tuple[tuple, str]:
        """The ended phase's optimisers that ``starting`` keeps, and how (``carry`` or ``averages``): the time
        steps' in phase 2 (``steps_rates_offsets``), the time steps' and offsets' in phase 3
        (``schedule_rates_coefficients``); none at ``reset``."""
        o = self.options
        if starting is not None and starting.coefficients and not starting.residual:  # phase 4 moves neither
            names, mode = ("steps", "offsets"), o.schedule_rates_coefficients
        elif starting is not None and starting.name == "offsets":
            names, mode = ("steps",), o.steps_rates_offsets
        else:
            return (), "reset"
        return (() if mode == "reset" else tuple(n for n in names if n in self.optimizers)), mode

    # -- main loop ----------------------------------------------------------------------------
    def run(self, checkpoint: Optional[Callable[["LD3Trainer"], None]] = None) -> LearnedSchedule:
        """Train through every phase (those done already are skipped); calls ``checkpoint(self)`` after each
        validation."""
        clock_start = self._train_until(len(self.phases), checkpoint)
        s = self.state
        s.stopped = s.stopped or "budget"
        self._set_params(s.best_params)
        s.elapsed = time.perf_counter() - clock_start
        return self._result()

    def run_schedule_phases(self, checkpoint: Optional[Callable[["LD3Trainer"], None]] = None) -> dict:
        """Train LD3's phases only, those before any that learns coefficients (:func:`schedule_phase_count`);
        :meth:`run` goes on from there (``train.restarts`` compares runs here).  Returns what they gave, also when
        the run had gone further: ``best_val`` (validation when they ended), ``iterations`` and ``seconds``."""
        end = schedule_phase_count(self.phases)
        self._train_until(end, checkpoint)
        s, names = self.state, {p.name for p in self.phases[:end]}
        ended = s.phase_ends.get(self.phases[end - 1].name) if end else None
        mine = [h for h in s.history if h["phase"] in names]
        return {"best_val": float(ended["best_val"] if ended else s.best_val), "iterations": len(mine),
                "seconds": float(mine[-1]["seconds"]) if mine else 0.0}

    def _train_until(self, end: int, checkpoint) -> float:
        """Train until phase ``end`` starts (``len(phases)``: to the end); the clock's start, resumed runs included."""
        self.start()
        s = self.state
        clock_start = time.perf_counter() - s.elapsed
        while s.phase_index < end:
            phase = self.phases[s.phase_index]
            if self._phase_done(phase):
                self._next_phase()
                continue
            rec = self._iteration(phase, clock_start)
            if self.progress is not None:
                self.progress(rec)
            if "val" in rec and checkpoint is not None:
                checkpoint(self)
        s.elapsed = time.perf_counter() - clock_start
        return clock_start

    def _iteration(self, phase: Phase, clock_start: float) -> dict:
        """One training iteration of ``phase`` (and a validation when one is due); its record, kept in the history."""
        s, o = self.state, self.options
        rec = self._step(self._next_batch(self.batch_size(phase)), phase)
        s.iteration += 1
        s.phase_iteration += 1
        rec.update(iteration=s.iteration, phase=phase.name, lr=self._lead(phase).lr,
                   seconds=time.perf_counter() - clock_start)
        every = o.val_every_residual if phase.residual else o.val_every_coefficients if phase.coefficients \
            else o.val_every
        if s.iteration % max(1, every) == 0:
            rec.update(self._validate(phase))
        s.history.append(rec)
        s.elapsed = time.perf_counter() - clock_start
        return rec

    def _best_phase(self) -> Optional[Phase]:
        return self.phases[self.state.best_phase] if self.state.best_phase >= 0 else None

    def _best_sampler(self) -> Sampler:
        """The sampler of the current parameters as the best phase runs them (detached, on the CPU)."""
        return self._student_sampler(self._best_phase(), grad=False).detached()

    def _result(self) -> LearnedSchedule:
        o, s, phase = self.options, self.state, self._best_phase()
        decoupled = phase is not None and phase.decoupled
        return LearnedSchedule(
            sampler=self._best_sampler(), nfe=self.nfe, param=o.param, loss=self.loss_name, init=s.init_name,
            init_val=s.init_val, best_val=s.best_val, learn=tuple(o.learn),
            best_phase=phase.name if phase is not None else "init",
            baselines={k: {"train": v["train"], "val": v["val"]} for k, v in s.baselines.items()},
            history=s.history, iterations=s.iteration, seconds=s.elapsed, radius=self.radius,
            stopped=s.stopped, eval_scale=o.eval_scale, offset_units=o.offset_units,
            window_fractions=self.grid.window_fractions().tolist() if decoupled else [],
            after_phase={k: end["best_val"] for k, end in s.phase_ends.items()},
            phase_samplers={k: end["sampler"] for k, end in s.phase_ends.items()})

    def best_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, sigmas_eval) of the best schedule so far, without disturbing training."""
        current = self._param_copies()
        self._set_params(self.state.best_params)
        phase = self._best_phase()
        sig, ev = self.grid.values(phase is not None and phase.decoupled)
        self._set_params(current)
        return sig.cpu(), ev.cpu()

    # -- resumable state ----------------------------------------------------------------------
    def dump_state(self) -> tuple[dict, dict]:
        """The state as ``(tensors, info)`` (:func:`~ld3_cli.ld3.state.encode_state`).  Only reads: nothing is
        scored or changed, before :meth:`start` too.  The tensors are the live ones: clone them to keep them."""
        return encode_state(self.state)

    def load_state(self, tensors: dict, info: dict) -> None:
        """Continue from a state that :meth:`dump_state` gave; no baseline is scored again.  A state of another
        format or of another run (phases, learned tensors, shapes) raises ConfigError and leaves the trainer as
        it was."""
        saved = decode_state(tensors, info)
        if saved.phase_names != self.state.phase_names:
            raise ConfigError(f"the saved training state has phases {saved.phase_names}, this run "
                              f"{self.state.phase_names}")
        before = self.state, self.grid, self.coefficients, self.residual, self.optimizers
        try:
            self._adopt(saved)
        except Exception as e:
            self.state, self.grid, self.coefficients, self.residual, self.optimizers = before
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"the saved training state does not fit this run ({type(e).__name__}: {e})") from None

    def _adopt(self, saved: TrainerState) -> None:
        """Make ``saved`` (tensors as loaded) the state: on this run's device, with the parameterizations and
        the optimisers built around its tensors."""
        saved.train_noises = saved.train_noises.to(self.device, self.dtype)
        saved.epoch_order = None if saved.epoch_order is None else saved.epoch_order.long()
        self.state = saved
        if not saved.init_name:  # saved before start(): start() scores the baselines
            return
        values = saved.params
        self._build(torch.as_tensor(saved.baselines[saved.init_name]["sigmas"], dtype=torch.float64))
        if set(values) != set(saved.params):
            raise ConfigError(f"the saved training state learns {sorted(values)}, this run {sorted(saved.params)}")
        self._set_params(values)
        saved.best_params = {k: saved.best_params[k].to(self.device) for k in saved.params}
        self._make_optimizers(saved.optimizers)


def learn_schedule(denoiser, solver: str, nfe: int, noises: torch.Tensor, targets: torch.Tensor,
                   schedule: Optional[str] = None, cond: Optional[torch.Tensor] = None,
                   solver_options: Optional[dict] = None, learn=None, **options) -> LearnedSchedule:
    """Learn an LD3 schedule (and, with ``"coefficients"`` in ``learn``, the solver's coefficients) in one call.

    Args:
        denoiser: sigma-space denoiser ``D(x, sigma[B], cond) -> x0`` with ``schedule`` and ``decode``.
        solver: solver name (euler, heun, dpmpp, unipc, ipndm, deis, ...); ``solver_options`` its options (the
            solver's declared defaults for those not given, the same as ``solver=<name>`` composes).
        nfe: student NFE.
        noises: ``[n, C, H, W]`` unit-variance noises; targets: ``[n, ...]`` teacher images in [-1, 1].
        schedule: ``train.init``: ``"auto"`` (best baseline on the training split; the default) or a baseline name.
        learn: ``train.learn``, any subset of ``("steps", "offsets", "coefficients", "residual")`` (default: steps,
            offsets; residual only with coefficients).
        **options: any other train option (``batch_size``, ``r``, ``param``, ``iters_phase3``, ``restarts`` ...); the
            defaults are the declared ones, which the CLI's configs/train/default.yaml also holds.

    Returns:
        :class:`LearnedSchedule`; ``result.solve(denoiser, x, cond)`` runs exactly what was learned from
        ``x`` (the state at ``sigma_max``).
    """
    named = {"init": schedule, "learn": None if learn is None else tuple(learn)}
    opts = TrainOptions(**options, **{k: v for k, v in named.items() if v is not None})  # checked here, once
    solver_options = get_solver(solver).resolve_options(solver_options or {}, values=True, fill_defaults=False)
    trainer, record = best_restart(
        opts, lambda k, o: LD3Trainer(denoiser, solver, solver_options, nfe, noises, targets, cond, o))
    return trainer.run().with_restarts(record)
