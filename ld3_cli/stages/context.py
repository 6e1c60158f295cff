"""What every stage gets: the config, the device, the store, the model (built once per command)."""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from ..solvers.base import analytic_first
from ..store import Store, to_plain
from ..utils.devices import resolve_device
from ..utils.distributed import rank_device
from ..utils.model_size import SMALL_MODEL_PARAMETERS, parameter_count
from .checks import run_settings
from .keys import model_key
from .table import STAGE_SECTIONS, STAGES

log = logging.getLogger("ld3")


# What reading a damaged or wrong-format weights file raises below a model builder's own checks.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)


def unreadable_checkpoint(model_cfg: dict, e: Exception) -> ConfigError:
    """A one-line user error for a weights file the model's loader could not parse."""
    path = next((model_cfg[k] for k in ("path", "checkpoint", "weights") if model_cfg.get(k)), None)
    what = f"the weights file {path}" if path else "its weights file"
    want = f" ({model_cfg['file_name']} from {model_cfg['url']})" if model_cfg.get("file_name") and model_cfg.get(
        "url") else ""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return ConfigError(f"cannot load model {model_cfg.get('name', '')}: {what} is damaged or not a checkpoint of this "
                       f"model kind ({type(e).__name__}: {first}); point model.path at the right file{want}")


class ModelCache:
    """The model a CLI process has built, by key (model key, device, speed options), one at a time.

    One is made per ``ld3`` command (:func:`ld3_cli.cli.apps.run_app`) and handed to every job's
    :class:`StageContext`: the jobs of a multirun on one model, and the steps
    of ``ld3 run``, load it once; a job on another model frees the last one before building its own.
    """

    def __init__(self):
        self._key: Optional[Hashable] = None
        self._model: Any = None
        self.builds = 0  # how many models this cache has built

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The model for ``key``: the cached one, else ``build()`` (which replaces it)."""
        if self._model is None or key != self._key:
            self._key = self._model = None  # free the last model before building the next
            model = build()
            self._key, self._model = key, model
            self.builds += 1
        return self._model


class StageContext:
    """Per-job state shared by the stage functions.

    ``models``: where the model is looked up and kept -- the command's :class:`ModelCache`, shared by
    the jobs of a multirun; by default one of this context's own.
    """

    def __init__(self, cfg: DictConfig, stage: str, overrides: Optional[list[str]] = None,
                 models: Optional[ModelCache] = None):
        self.cfg = cfg
        self.stage = stage
        self.overrides = list(overrides or [])
        self.device = rank_device(resolve_device(cfg.device))  # torchrun: this rank's GPU, before anything is built
        self.store = Store(Path(str(cfg.cache_dir)))
        self.model_cfg = to_plain(cfg.model)
        self.model_key = model_key(cfg.model, (cfg.get("speed") or {}).get("autocast"))
        self.settings = run_settings(cfg)  # checked at the boundary already: this is the memoised result
        self.solver_name = self.settings.solver.name
        self.solver_options = dict(self.settings.solver.options)
        self.nfe = self.settings.solver.nfe
        self.n_steps = self.settings.solver.steps
        self.models = models if models is not None else ModelCache()
        self._model = None

    @property
    def analytic_first(self) -> bool:
        """Whether the student solver takes its first step analytically (``solver.analytic_first``)."""
        return analytic_first(self.solver_options)

    @property
    def solver_variant(self) -> str:
        """``ipndm``, or ``ipndm+afs`` with the analytic first step: the solver column of results.csv."""
        return self.solver_name + ("+afs" if self.analytic_first else "")

    @property
    def solver_tag(self) -> str:
        """``unipc3`` (the solver and its order, if it has one; ``-afs`` with the analytic first step), for default
        file names."""
        order = self.solver_options.get("order")
        tag = f"{self.solver_name}{order}" if order is not None else self.solver_name
        return tag + ("-afs" if self.analytic_first else "")

    # -- the model ----------------------------------------------------------------------------
    @property
    def model(self):
        """The denoiser on ``self.device``, wrapped with the config's ``speed`` options (none by default)."""
        if self._model is None:
            speed = to_plain(self.cfg.get("speed") or {})
            key = (self.model_key, str(self.device), *sorted(speed.items()))
            self._model = self.models.get(key, lambda: self._build_model(speed))
        return self._model

    def _build_model(self, speed: dict):
        from hydra.errors import InstantiationException

        from ..models.registry import BuildContext, build_model
        from ..models.speed import optimize_denoiser

        log.info("loading model %s (%s) on %s", self.model_cfg.get("name"), self.model_key, self.device)
        bc = BuildContext(device=self.device, cache=self.store.fit_cache(), dataset=to_plain(self.cfg.dataset),
                          allow_download=bool(self.model_cfg.get("download", False)))
        try:
            model = optimize_denoiser(build_model(self.model_cfg, bc), **speed)
        except UNREADABLE_FILE_ERRORS as e:
            raise unreadable_checkpoint(self.model_cfg, e) from None
        except InstantiationException as e:  # model._target_: no such class, or wrong arguments
            why = re.sub(r",? *set env var HYDRA_FULL_ERROR=1 to see chained exception\.?", "",
                         " ".join(str(e).split()))[:300]
            raise ConfigError(f"cannot build model._target_={self.model_cfg.get('_target_')} ({why}); set "
                              "model._target_ to an importable ld3_cli.models.Denoiser subclass and pass "
                              "only its constructor's arguments (+model.<name>=...)") from None
        small_model_threads(model, self.device)
        return model

    # -- commands that (re)produce artifacts -----------------------------------------------------
    def command(self, stage: Optional[str] = None, extra: Optional[list[str]] = None) -> str:
        """The ``ld3`` command that reproduces this job's artifacts of ``stage``.

        ``extra`` overrides replace this job's override of the same key in place, or are appended.
        """
        stage = stage or self.stage
        own = STAGES[stage].section

        def key(o: str) -> str:
            return o.lstrip("+~").split("=")[0]

        def keep(o: str) -> bool:  # drop Hydra's settings and the options of other stages
            top = key(o).split(".")[0]
            return top != "hydra" and (top not in STAGE_SECTIONS or top == own)

        replace = {key(o): o for o in extra or []}
        words = [replace.pop(key(o), o) for o in self.overrides if keep(o)]
        return " ".join([f"ld3 {stage}", *words, *replace.values()])

    # -- progress -------------------------------------------------------------------------------
    def progress(self, total: int, desc: str, unit: str = "it", initial: int = 0):
        from ..utils.progress import Progress

        return Progress(total, desc, unit, initial, enabled=bool(self.cfg.progress))


def hydra_overrides() -> list[str]:
    """The task overrides of the running Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not running under Hydra
        return []


def small_model_threads(model: torch.nn.Module, device: torch.device) -> None:
    """One torch intra-op thread for a small model on the CPU, unless ``LD3_THREADS`` sets the count.

    Measured on a shared 2-core machine (docs/benchmarks.md): with two threads every parallel region of
    a tiny op wakes the other thread, giving ~190k involuntary context switches per demo, more CPU and
    less speed (training loop 8.8 -> 7.1 s CPU, 13.4 -> 7.3 s wall on one thread).
    """
    if torch.device(device).type != "cpu" or os.environ.get("LD3_THREADS") or torch.get_num_threads() == 1:
        return
    n = parameter_count(model)
    if n < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
        log.info("one CPU thread for this small model (%d parameters; LD3_THREADS=N to change)", n)


def configure_torch(cfg: DictConfig) -> None:
    """Global torch settings for a stage: TF32 (logged), CPU threads."""
    if torch.cuda.is_available():
        on = bool(cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
        if on:
            log.info("TF32 matmuls/convolutions are ON (tf32=false to turn off)")
    threads = os.environ.get("LD3_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
