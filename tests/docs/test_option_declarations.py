"""Every declared option agrees everywhere: the YAML, the composed config, the config reference, validation.

The declarations (ld3_cli/ld3/options.py's TRAIN_GROUPS, each solver's ``declared``) are the one home of an
option; an option added in one place only (a YAML key, a declaration not regenerated, a stale reference) fails here.
"""
from __future__ import annotations

import re
import sys

import pytest
import yaml
from docs_testlib import REPO

from ld3_cli.errors import ConfigError
from ld3_cli.ld3.options import TRAIN_GROUPS, TRAIN_OPTIONS, TrainOptions
from ld3_cli.models.registry import MODEL_HINT_KEYS
from ld3_cli.solvers import SOLVERS
from ld3_cli.solvers.config import SolverSetup

sys.path.insert(0, str(REPO / "scripts"))
import gen_option_configs  # noqa: E402

REFERENCE = (REPO / "docs" / "config-reference.md").read_text()
NOT_A_VALUE = object()  # no rule accepts it


def _declared():
    """(config path prefix, option, where its YAML lives) for every declared option."""
    for o in TRAIN_OPTIONS.values():
        yield "train", o, REPO / "configs" / "train" / "default.yaml"
    for name, spec in SOLVERS.items():
        for o in spec.declared.values():
            yield f"solver={name}", o, REPO / "configs" / "solver" / f"{name}.yaml"


def test_the_generated_configs_are_committed():
    stale = [str(p.relative_to(REPO)) for p, text in gen_option_configs.generated().items() if p.read_text() != text]
    assert not stale, f"{stale} differ from the declarations: run python scripts/gen_option_configs.py"


@pytest.mark.parametrize("where,option,path", list(_declared()), ids=lambda v: getattr(v, "name", str(v))[-30:])
def test_each_option_in_yaml_reference_and_validation(where, option, path):
    values = yaml.safe_load(path.read_text())
    assert option.name in values, f"{path.name} lacks {option.name}"
    written = values[option.name]
    if option.yaml is None:  # a plain default reads back as the declared value
        assert written == (list(option.default) if isinstance(option.default, tuple) else option.default)
    else:  # an interpolation carries the declared default
        assert written == option.yaml.replace("{default}", gen_option_configs.yaml_literal(option.default))
    group = where.split("=")[0]
    row = f"| `{group}.{option.name}` | "
    assert any(line.startswith(row) and option.doc[:40] in line for line in REFERENCE.splitlines()), \
        f"docs/config-reference.md has no row {row} with the declared doc: run python scripts/gen_config_reference.py"
    assert option.rule.holds(option.default) and not option.rule.holds(NOT_A_VALUE)
    with pytest.raises(ConfigError, match=rf"{group}\.{option.name} must be "):
        option.check(NOT_A_VALUE, group)


def test_the_yaml_holds_nothing_undeclared():
    train = yaml.safe_load((REPO / "configs" / "train" / "default.yaml").read_text())
    assert set(train) == set(TRAIN_OPTIONS)
    for name, spec in SOLVERS.items():
        solver = yaml.safe_load((REPO / "configs" / "solver" / f"{name}.yaml").read_text())
        assert set(solver) == {"name", *spec.declared} and solver["name"] == name


def test_every_model_hint_an_option_reads_is_a_hint_key():
    """An option whose default a model config may set (``${oc.select:model.<hint>,...}``) names a key that ld3
    treats as a hint: never passed to the model's constructor, never in its store key."""
    hints = {m.group(1) for o in TRAIN_OPTIONS.values() if isinstance(o.yaml, str)
             for m in [re.search(r"oc\.select:model\.(\w+),", o.yaml)] if m}
    assert "train_steps_rates_offsets" in hints and hints <= MODEL_HINT_KEYS, hints - MODEL_HINT_KEYS


def test_each_group_declares_distinct_options_with_docs():
    names = [o.name for g in TRAIN_GROUPS for o in g.options]
    assert len(names) == len(set(names)) == len(TRAIN_OPTIONS)
    assert all(o.doc.endswith(".") and len(o.doc) < 240 for o in TRAIN_OPTIONS.values())


def test_a_declaration_change_reaches_the_generated_yaml(monkeypatch):
    """The generator reads the declarations: a changed default is what the YAML says."""
    from dataclasses import replace

    from ld3_cli.ld3 import options

    group = options.TRAIN_GROUPS[2]
    changed = replace(group, options=tuple(replace(o, default=0.004) if o.name == "lr" else o for o in group.options))
    monkeypatch.setattr(gen_option_configs, "TRAIN_GROUPS", (*options.TRAIN_GROUPS[:2], changed,
                                                              *options.TRAIN_GROUPS[3:]))
    assert "\nlr: 0.004\n" in gen_option_configs.train_yaml()


def test_library_and_cli_share_the_defaults():
    """The defaults a library call gets are the composed config's (the same declarations)."""
    from hydra import compose, initialize_config_dir

    from ld3_cli.cli.apps import config_dir
    from ld3_cli.utils.plain import to_plain

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for name, spec in SOLVERS.items():
            cfg = compose("train", overrides=[f"solver={name}", "nfe=5" if name != "k_heun" else "nfe=7"])
            setup = SolverSetup.from_config(to_plain(cfg.solver), cfg.nfe)
            assert setup.resolved == spec.defaults, name
        cfg = compose("train", overrides=["model=mnist_gmm"])
    train = to_plain(cfg.train)
    assert TrainOptions.from_dict(train) == TrainOptions(param=train["param"], batch_size=train["batch_size"],
                                                          iters_phase1=train["iters_phase1"],
                                                          iters_phase2=train["iters_phase2"], seed=train["seed"])
