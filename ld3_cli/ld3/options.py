"""The trainer's options (the ``train`` config group): each declared once, grouped by what it governs.

:data:`TRAIN_GROUPS` is the one declaration of every training option (default, rule, one-line doc, whether it
keys the store).  ``scripts/gen_option_configs.py`` writes ``configs/train/default.yaml`` from it (and
``scripts/gen_config_reference.py`` the config reference from that file), :data:`TRAIN_RUNTIME_KEYS` (what
stays out of a schedule's store key) comes from it, and :class:`TrainOptions` checks every value against it.

:class:`TrainOptions` is immutable and checked when it is made: an unknown name or an impossible value is one
:class:`~ld3_cli.errors.ConfigError` line (``train.lr must be > 0, got -1``), raised where the options enter
(the CLI's boundary check, or :func:`~ld3_cli.ld3.trainer.learn_schedule`), never later.  The vocabularies
come from where they are defined: ``param``, ``offset_units`` and ``eval_scale`` from
:mod:`~ld3_cli.ld3.parameterization`, ``loss`` from :data:`~ld3_cli.ld3.losses.LOSSES`, the optimisers from
:mod:`~ld3_cli.ld3.optim`, ``noise_estimate`` is :data:`~ld3_cli.solvers.base.NOISE_ESTIMATE` itself, ``init`` and
``init_candidates`` from the registered discretizations (read when checked, so a plug-in registered later
counts).  Why the defaults are what they are: docs/reproduction.md.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import ConfigError
from ..solvers.base import NOISE_ESTIMATE
from ..solvers.unipc import RHO_GRADIENTS
from ..utils.option_schema import (FLAG, PATH_OR_NULL, Option, OptionGroup, Rule, by_name, check_options, list_of,
                                   number, one_of, whole)
from .coefficients import CONSTRAINTS
from .losses import LOSSES
from .optim import COEFFICIENT_OPTIMIZERS, OFFSET_OPTIMIZERS
from .parameterization import EVAL_SCALES, OFFSET_UNITS, SPACES

DEFAULT_INIT_CANDIDATES = ("logsnr", "edm", "time_uniform", "time_quadratic")
LEARNABLE = ("steps", "offsets", "coefficients", "residual")
# an optimiser at a phase change: fresh, the ended phase's going on, or its running averages at a fresh rate
SCHEDULE_RATES = ("reset", "carry", "averages")


def _kinds() -> tuple:
    from ..schedules import available

    return tuple(available())


POSITIVE = number(lambda v: v > 0, "> 0")
FRACTION_OPEN = number(lambda v: 0 <= v < 1, "in [0, 1)")
INIT = Rule(lambda v: v == "auto" or v in _kinds(), lambda: f"auto or one of {list(_kinds())}")


def _select(hint: str) -> str:
    """YAML of a default the model config may override through its hint ``model.<hint>``."""
    return "${oc.select:model." + hint + ",{default}}"


SCHEDULE = OptionGroup("schedule", "The grid: where the time steps live, where they start, the decoupled times", (
    Option("param", "lambda", one_of(SPACES), "Space of the learned grid: lambda (log-SNR; pixel / EDM models) or "
           "time (native t; latent / VP models); the model's hint, else lambda.", yaml=_select("param")),
    Option("init", "auto", INIT, "Starting schedule: auto (the best of init_candidates on the training split) or a "
           "baseline name."),
    Option("init_candidates", DEFAULT_INIT_CANDIDATES, list_of(_kinds), "Baselines tried by init=auto.",
           as_tuple=True),
    Option("win_rate", 0.5, number(lambda v: 0 <= v <= 1, "in [0, 1]"),
           "Bound of the decoupled offsets, as a fraction of the smallest grid gap."),
    Option("decouple_first", False, FLAG, "The first evaluation's time (at sigma_max) is decoupled too, within the "
           "same bound and towards the grid only; false: it stays at sigma_max, as the paper's code (no effect with "
           "solver.analytic_first)."),
    Option("offset_units", "window", one_of(OFFSET_UNITS), "Units of the offsets: window (a fraction of the bound, "
           "one learning rate for every noise schedule) or official (log-SNR or time in (0, 1], as the paper's code); "
           "the model's hint, else window.", yaml=_select("train_offset_units")),
    Option("eval_scale", "model", one_of(EVAL_SCALES), "State scale at a decoupled evaluation, alpha(sigma) / "
           "alpha(sigma_eval): model (the model's alpha; 1 for EDM), vp (VP's alpha) or none (1)."),
    NOISE_ESTIMATE,
))

OBJECTIVE = OptionGroup("objective", "The loss and soft teacher forcing", (
    Option("loss", "auto", one_of(LOSSES), "Student-teacher distance: auto (LPIPS-VGG for RGB images -- a run stops "
           "when its weights are missing, never falls back --, l2 otherwise), lpips, l2, l1 or pseudo_huber."),
    Option("lpips_weights", None, PATH_OR_NULL, "Local path of torchvision's vgg16-397923af.pth for LPIPS (null = "
           "the torch hub cache).", keyed=False),
    Option("gamma", 0.001, number(lambda v: v >= 0, ">= 0"),
           "Soft teacher forcing: the student's noise may move within r = gamma * d / NFE^2 (unit-noise space)."),
    Option("r", None, number(lambda v: v >= 0, ">= 0 (0 = hard loss)", optional=True),
           "The radius set directly (null = from gamma; 0 = hard loss)."),
    Option("shift_lr", None, number(lambda v: v > 0, "> 0", optional=True),
           "Step size of the noise update (null = 12 / NFE, the paper's code)."),
))

OPTIMISERS = OptionGroup("optimisers", "How the time steps, the offsets and the learning rates move", (
    Option("lr", 0.005, POSITIVE, "Learning rate of the time steps (RMSprop on the schedule logits)."),
    Option("momentum", 0.9, FRACTION_OPEN, "RMSprop momentum."),
    Option("offsets_optimizer", "rmsprop", one_of(OFFSET_OPTIMIZERS), "Optimiser of the decoupled offsets: rmsprop "
           "or sgd (the paper's code: lr_offsets / NFE, with lr_offsets 0.1); the model's hint, else rmsprop.",
           yaml=_select("train_offsets_optimizer")),
    Option("lr_offsets", 0.005, POSITIVE, "Learning rate of the decoupled offsets; the model's hint, else 0.005.",
           yaml=_select("train_lr_offsets")),
    Option("lr_decay", 0.8, number(lambda v: 0 < v <= 1, "in (0, 1]"),
           "Learning-rate factor after `patience` validations without improvement (the best state is restored)."),
    Option("min_lr", 0.00005, number(lambda v: v >= 0, ">= 0"),
           "A phase ends when the learning rate of its first parameter group decays to this."),
    Option("patience", 5, whole(1), "Validations without improvement before the best is restored and lr decays."),
    Option("grad_clip", 1.0, POSITIVE, "Gradient-norm clipping, per parameter group."),
    Option("steps_rates_offsets", "reset", one_of(SCHEDULE_RATES), "The time steps' optimiser in phase 2: reset "
           "(fresh, at lr), carry (phase 1's goes on, decayed rate and running averages: the paper's code) or "
           "averages (phase 1's averages at lr); the model's hint, else reset.",
           yaml=_select("train_steps_rates_offsets")),
    Option("rho_gradient", "full", one_of(RHO_GRADIENTS), "UniPC's weights rho in the gradient of the time steps: "
           "full (exact) or stopped (rho held constant in the step-size ratios, as the paper's code computes it); "
           "the model's hint, else full.", yaml=_select("train_rho_gradient")),
))

PHASES = OptionGroup("phases", "What is learned, for how long, on which pairs, validated how often", (
    Option("learn", ("steps", "offsets"), list_of(LEARNABLE), "What is learned: steps (phase 1), offsets (decoupled "
           "evaluation times, phase 2), coefficients (the solver's weights, phase 3), residual (per-step networks, "
           "phase 4).", as_tuple=True),
    Option("iters_phase1", 50, whole(0), "Iterations of phase 1 (time steps); the model's hint, else 50.",
           yaml=_select("train_iters_phase1")),
    Option("iters_phase2", 125, whole(0), "Iterations of phase 2 (time steps and offsets); the model's hint, else "
           "125.", yaml=_select("train_iters_phase2")),
    Option("iters_phase3", 150, whole(0), "Iterations of phase 3 (the coefficients; only when learn has them)."),
    Option("alternate_rounds", 0, whole(0), "0: phase 3 learns coefficients and schedule jointly; k: k rounds "
           "alternating them, iters_phase3 / (2k) iterations each (S4S-Alt)."),
    Option("val_fraction", 0.5, number(lambda v: 0 < v < 1, "in (0, 1)"),
           "Fraction of the teacher pairs held out for validation."),
    Option("batch_size", 2, whole(1), "Teacher pairs per training iteration; the model's hint, else 2.",
           yaml=_select("train_batch_size")),
    Option("val_batch_size", 0, whole(0), "Pairs per validation batch (0 = the whole validation split at once).",
           keyed=False),
    Option("val_every", 1, whole(1), "Validate every this many iterations in LD3's phases."),
    Option("grad_checkpoint", "auto", one_of(("auto", True, False)),
           "Gradient checkpointing per solver step: auto (for networks over 1M parameters), true or false."),
    Option("seed", 0, whole(), "Seed of the batch order (the top-level seed).", yaml="${seed}"),
    Option("restarts", 1, whole(1), "LD3's phases run this many times, from the batch orders of seed, seed + "
           "1000003, ...; the run with the lowest validation loss is kept (and goes on to phase 3); the model's hint, "
           "else 1.", yaml=_select("train_restarts")),
))

COEFFICIENTS = OptionGroup("coefficients", "The learned solver coefficients (phase 3; learn has coefficients)", (
    Option("lr_coefficients", 0.05, POSITIVE, "Step size on the coefficient corrections (relative to each weight)."),
    Option("coefficients_optimizer", "adam", one_of(COEFFICIENT_OPTIMIZERS),
           "Optimiser of the corrections: adam or rmsprop (docs/reproduction.md compares them)."),
    Option("coefficient_decay", 0.0, FRACTION_OPEN,
           "After each update the corrections shrink by this fraction towards the base solver (0 = none)."),
    Option("coefficient_history", 0, whole(0),
           "Network outputs a learned step may combine: 0 = every earlier one, k = at most k."),
    Option("coefficient_constraint", True, one_of(CONSTRAINTS), "true: the weights on the network outputs keep the "
           "base solver's sum (a constant denoiser stays exact); false: every step's lead weight is learned; last: "
           "only the last step's (DyWeight's family)."),
    Option("batch_size_coefficients", 50, whole(0), "Training pairs per iteration in phase 3 (0 = batch_size)."),
    Option("val_every_coefficients", 5, whole(1), "Validate every this many iterations in phase 3."),
    Option("schedule_rates_coefficients", "reset", one_of(SCHEDULE_RATES),
           "The optimisers of the time steps and offsets in phase 3: reset (fresh, at lr and lr_offsets), "
           "carry (LD3's go on: their decayed rates and running averages) or averages (LD3's averages, fresh rates)."),
))

RESIDUAL = OptionGroup("residual", "The learned residual operator (phase 4; learn has residual)", (
    Option("iters_residual", 1500, whole(0), "Iterations of phase 4 (the residual operator)."),
    Option("lr_residual", 0.001, POSITIVE, "Adam's step size on the residual operator's weights."),
    Option("residual_decay", 0.0, FRACTION_OPEN, "Decoupled weight decay of the residual's weights: after each "
           "step w <- (1 - decay) w."),
    Option("residual_joint", 0.3, number(lambda v: v >= 0, ">= 0"), "Phase 4 also moves the time steps, offsets "
           "and coefficients that learn has, at their own rates times this factor (0 = the residual alone, the rest "
           "frozen)."),
    Option("residual_width", 16, whole(1), "Hidden channels of each step's residual network."),
    Option("residual_steps", 0, whole(0), "The steps that get a residual network: 0 = every step, k = the last k."),
    Option("batch_size_residual", 50, whole(0), "Training pairs per iteration in phase 4 (0 = batch_size)."),
    Option("val_every_residual", 50, whole(1), "Validate every this many iterations in phase 4."),
    Option("loss_residual", "same", one_of(("same", *LOSSES)), "Phase 4's training loss: same (train.loss) or "
           "another (pseudo_huber: the few samples in another mode do not drive it); validation keeps train.loss."),
))

TRAIN_GROUPS: tuple[OptionGroup, ...] = (SCHEDULE, OBJECTIVE, OPTIMISERS, PHASES, COEFFICIENTS, RESIDUAL)
TRAIN_OPTIONS: dict[str, Option] = by_name(o for g in TRAIN_GROUPS for o in g.options)
# what never enters a schedule's store key (runtime settings: a validation batch size, a weights path)
TRAIN_RUNTIME_KEYS = frozenset(name for name, o in TRAIN_OPTIONS.items() if not o.keyed)


def _check_learn(values: dict) -> dict:
    """``values`` if what ``learn`` names can be learned together (the residual operator trains on the learned
    solver: ``residual`` needs ``coefficients``); a ConfigError naming the fix otherwise."""
    if "residual" in values["learn"] and "coefficients" not in values["learn"]:
        raise ConfigError(f"train.learn={list(values['learn'])} has residual without coefficients: the residual "
                          "operator trains on the learned solver (phase 3 before it); use "
                          "train.learn=[steps,offsets,coefficients,residual]")
    return values


class TrainOptions:
    """Trainer settings, checked when made (``TrainOptions(lr=0.01, learn=["steps"])``) and immutable after.

    Read them as attributes (``options.lr``); :meth:`replace` gives a changed copy (only the changes are checked);
    :meth:`as_dict` the plain values.  Lists are kept as tuples.
    """

    __slots__ = ("_values",)

    def __init__(self, **given: Any):
        object.__setattr__(self, "_values", _check_learn(check_options(TRAIN_OPTIONS, given, "train")))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> "TrainOptions":
        return cls(**dict(options))

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"TrainOptions has no option '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TrainOptions are immutable: use options.replace({name}=...)")

    def replace(self, **changes: Any) -> "TrainOptions":
        """A copy with ``changes`` (each checked; unknown names refused)."""
        out = object.__new__(TrainOptions)
        object.__setattr__(out, "_values", _check_learn({
            **self._values, **check_options(TRAIN_OPTIONS, changes, "train", fill_defaults=False)}))
        return out

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __reduce__(self):  # copy / pickle through the checked constructor
        return (TrainOptions.from_dict, (self._values,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainOptions) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._values.items())))

    def __repr__(self) -> str:
        return "TrainOptions(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def schedule_iterations(self) -> int:
        """Iterations of LD3's phases (those before any that learns coefficients) in one run, at full budgets."""
        from .phases import plan_phases, schedule_phase_count

        phases = plan_phases(self)
        return sum(p.budget for p in phases[:schedule_phase_count(phases)])

    def total_iterations(self, restarts: Optional[int] = None) -> int:
        """Iterations of a whole run at full budgets: LD3's phases once per restart (``restarts``, else the option's),
        then the rest."""
        from .phases import plan_phases

        runs = int(self.restarts if restarts is None else restarts)
        rest = sum(p.budget for p in plan_phases(self)) - self.schedule_iterations()
        return runs * self.schedule_iterations() + rest


def check_train_options(options: Mapping[str, Any]) -> TrainOptions:
    """``TrainOptions`` of ``options`` (a ``train`` config as plain data), every value checked."""
    return TrainOptions.from_dict(options)


def effective_learn(learn, spec) -> tuple:
    """What ``train.learn`` means for solver ``spec``: a stock sampler (``spec.evaluates_on_grid``) evaluates the
    network on its own list, so it has no decoupled times (``offsets`` is dropped); whether the coefficients can
    be learned is :meth:`~ld3_cli.solvers.base.SolverSpec.check_learnable`'s to say."""
    learn = tuple(learn)
    if not spec.evaluates_on_grid:
        return learn
    return tuple(k for k in learn if k != "offsets") or ("steps",)
