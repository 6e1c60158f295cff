"""Which config fields determine each artifact (and so its store key).

* model key  = ``<model.name>-<hash>`` of the model config without ld3's own hints (param,
  teacher defaults, download/url) and with a weights path replaced by the file's name and size
  (moving a checkpoint does not invalidate its artifacts; replacing it does).
* teacher    = model key + teacher solver, NFE, discretization, seeds (start, n).
* schedule   = teacher key + student solver, NFE, the ``train`` group (minus runtime-only keys).
* samples    = model key + solver, NFE, the schedule (learned key or baseline sigmas), n, seeds.
* eval       = samples key + metric settings + reference identity.

Runtime-only settings (batch sizes for inference, devices, progress bars, paths of weights
for metrics) never enter a key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..ld3.options import RESIDUAL, TRAIN_RUNTIME_KEYS
from ..models.registry import MODEL_HINT_KEYS
from ..solvers.config import SolverSetup
from ..store import make_key, to_plain, without_neutral

TEACHER_VERSION = 1
# Version 2 (2026-11-30): a learned schedule records how it evaluates the network (eval_scales,
# noise_estimate) and its learned coefficients, and the dpmpp/unipc lower_order_final default is true
# (the official samplers); every earlier schedule and sample key is retired with it.
SCHEDULE_VERSION = 2
SAMPLES_VERSION = 2
EVAL_VERSION = 1


# settings added after keys were made: at these values (what every run did before the setting existed) they
# do not enter the key, so the keys made before them stay valid
NEUTRAL_MODEL_SETTINGS = {"time_rounding": (None, "none"), "guidance_scale": (1, 1.0)}
NEUTRAL_TRAIN_SETTINGS = {"schedule_rates_coefficients": (None, "reset"), "rho_gradient": (None, "full"),
                          "decouple_first": (None, False), "steps_rates_offsets": (None, "reset"),
                          "restarts": (None, 1), "iters_residual": (None, 1500), "lr_residual": (None, 0.001),
                          "residual_width": (None, 16), "residual_steps": (None, 0), "batch_size_residual": (None, 50),
                          "val_every_residual": (None, 50), "loss_residual": (None, "same"),
                          "residual_decay": (None, 0.0), "residual_joint": (None, 0.0)}
# training settings that change one solver's run only: other solvers' keys do not see them
SOLVER_TRAIN_SETTINGS = {"rho_gradient": "unipc"}
# phase 4's settings: they change a run only when train.learn has residual, so only such a run's key sees them
RESIDUAL_TRAIN_SETTINGS = frozenset(o.name for o in RESIDUAL.options)


def _file_identity(path: Any) -> Any:
    p = Path(str(path)).expanduser()
    if p.is_file():
        return {"file": p.name, "bytes": p.stat().st_size}
    if p.is_dir():
        return {"dir": p.name}
    return {"missing": p.name}


def model_key(model_cfg: Any, autocast: Any = None) -> str:
    m = to_plain(model_cfg)
    fields = without_neutral({k: v for k, v in m.items() if k not in MODEL_HINT_KEYS}, NEUTRAL_MODEL_SETTINGS)
    if autocast:
        fields["autocast"] = str(autocast)
    for k in ("path", "checkpoint", "weights"):
        if k in fields and fields[k] is not None:
            fields[k] = _file_identity(fields[k])
    name = str(m.get("name") or m.get("_target_", "model")).split(".")[-1]
    return f"{name}-{make_key(fields)[:8]}"


def teacher_fields(cfg, teacher_solver: SolverSetup, seed_start: int, n: int) -> dict:
    t = to_plain(cfg.teacher)
    return {"version": TEACHER_VERSION, "solver": teacher_solver.key_fields(), "nfe": int(t["nfe"]),
            "discretization": t["discretization"], "seed_start": int(seed_start), "n": int(n)}


def schedule_fields(cfg, solver: SolverSetup, teacher_key: str) -> dict:
    plain = to_plain(cfg.train)
    residual = "residual" in (plain.get("learn") or ())
    train = {k: v for k, v in plain.items()
             if k not in TRAIN_RUNTIME_KEYS and SOLVER_TRAIN_SETTINGS.get(k, solver.name) == solver.name
             and (residual or k not in RESIDUAL_TRAIN_SETTINGS)}
    train = without_neutral(train, NEUTRAL_TRAIN_SETTINGS)
    return {"version": SCHEDULE_VERSION, "teacher": teacher_key, "solver": solver.key_fields(),
            "nfe": int(cfg.nfe), "train": train}


def samples_fields(cfg, solver: SolverSetup, schedule_desc: dict) -> dict:
    s = cfg.sample
    return {"version": SAMPLES_VERSION, "solver": solver.key_fields(), "nfe": int(cfg.nfe),
            "schedule": schedule_desc, "n": int(s.n), "seed_offset": int(s.seed_offset),
            "shard_size": int(s.shard_size)}


def eval_fields(samples_key: str, metric_desc: dict) -> dict:
    return {"version": EVAL_VERSION, "samples": samples_key, "metrics": metric_desc}


def reference_identity(path: Any) -> Any:
    return None if path in (None, "") else _file_identity(path)
