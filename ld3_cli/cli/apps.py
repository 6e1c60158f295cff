"""One Hydra application per stage, all over the same ``configs/`` tree."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError


def config_dir() -> Path:
    """The config tree: ``$LD3_CONFIG_DIR``, else ``configs/`` beside the package (source checkout)."""
    env = os.environ.get("LD3_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    for c in candidates:
        if (c / "base.yaml").is_file():
            return c
    raise ConfigError("cannot find the ld3 config tree (configs/base.yaml); run ld3 from an installed source "
                      "checkout (pip install -e .) or set LD3_CONFIG_DIR=/path/to/ld3/configs")


def run_app(stage: str, config_name: str, hydra_args: list[str]) -> int:
    """Run the stage's Hydra app with ``hydra_args`` as its command line; return the exit status."""
    import hydra

    from ..stages.context import ModelCache
    from ..stages.runner import run_stage

    models = ModelCache()  # this command's: every job of a multirun (same model) loads it once

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def app(cfg):
        return run_stage(stage, cfg, models)

    saved = sys.argv
    sys.argv = [f"ld3 {stage}"] + list(hydra_args)
    try:
        app()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = saved
    return 0
