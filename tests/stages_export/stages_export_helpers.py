"""Helpers shared by the stage tests of export / schedules / fid-ref (imported by name: no package)."""
from __future__ import annotations

# small budgets: a rank-16 mixture (fast fit), 8 teacher samples, 3 + 3 training iterations
TINY = ["model.rank=16", "teacher.n=8", "teacher.nfe=20", "train.iters_phase1=3", "train.iters_phase2=3",
        "progress=false", "device=cpu"]


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ld3_cli.cli.apps import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def make_ctx(stage: str, store, overrides=()):
    """A StageContext for ``stage`` over ``store`` with the tiny budgets plus ``overrides``."""
    from ld3_cli.cli.main import STAGES
    from ld3_cli.stages.context import StageContext

    cfg = compose(STAGES[stage].config, [f"cache_dir={store}", *TINY, *overrides])
    return StageContext(cfg, stage, list(overrides))
