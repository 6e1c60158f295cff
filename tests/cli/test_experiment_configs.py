"""configs/experiment/<setup>_paper.yaml: the LD3 paper's settings as configuration.

No second copy of the values lives here.  Each composed experiment is checked against what it cites:

* every value line names its source in a comment (vinhsuhi/LD3 @ 9e4a66f: configs/*.yml, gen_data.sh, README,
  trainer.py, samplers/); where that comment quotes the official number (``cifar10.yml: order 3``,
  ``training_rounds_v1 2 x 25``, ``num_train 50, num_valid 50``) the composed value must be it;
* the settings table of docs/reproduction.md (what a reader is told the experiments do);
* mnist_paper follows cifar10_paper except on lines that say why not;
* the sweep each file's header gives is a valid set of jobs, and it covers the published FID table's NFEs.
"""
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ld3_cli.cli.apps import config_dir
from ld3_cli.stages.context import StageContext

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def composed(experiment, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", *overrides])


def lookup(cfg, dotted):
    return OmegaConf.select(cfg, dotted, throw_on_missing=True)


def value_lines(experiment) -> dict[str, str]:
    """``{dotted key: comment}`` for every value the experiment file sets (the ``defaults`` list aside)."""
    out, parent = {}, None
    for line in (config_dir() / "experiment" / f"{experiment}.yaml").read_text().splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):([^#]*)(?:#\s*(.*))?$", line)
        if not m or line.startswith("#"):
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3).strip(), (m.group(4) or "").strip()
        if indent == 0:
            parent = key
            if value:  # a top-level value: nfe, seed
                out[key] = comment
        elif parent != "defaults":
            out[f"{parent}.{key}"] = comment
    return out


def cited_number(comment: str):
    """The number an official-source comment quotes for the value, or None when it quotes none.

    ``cifar10.yml: order 3`` -> 3; ``training_rounds_v1 2 x 25`` -> 50; ``num_train 25 + num_valid 25`` -> 50;
    ``num_train 50, num_valid 50`` -> 0.5 (the validation fraction)."""
    m = re.match(r"^[^:]+: ([A-Za-z_]\w*) (-?\d+(?:\.\d+)?)(.*)$", comment)
    if not m:
        return None
    name, a, rest = m.group(1), float(m.group(2)), m.group(3)
    if mm := re.match(r" x (\d+)", rest):
        return a * int(mm.group(1))
    if mm := re.match(r" \+ [A-Za-z_]\w* (\d+)", rest):
        return a + int(mm.group(1))
    if name == "num_train" and (mm := re.match(r", num_valid (\d+)", rest)):
        return int(mm.group(1)) / (a + int(mm.group(1)))
    return a if rest == "" or rest.startswith((" (", ",")) else None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_value_names_its_source_and_equals_the_number_it_cites(experiment):
    cfg = composed(experiment)
    lines = value_lines(experiment)
    assert lines, experiment
    unsourced = [k for k, c in lines.items() if not c]
    assert unsourced == [], f"{experiment}: values without a source comment: {unsourced}"
    cited = {k: cited_number(c) for k, c in lines.items() if cited_number(c) is not None}
    assert cited, experiment
    for key, want in cited.items():
        assert lookup(cfg, key) == pytest.approx(want), f"{experiment}.{key}: {lines[key]}"


def settings_table() -> dict[str, dict[str, str]]:
    """docs/reproduction.md's "The paper's settings" table: ``{experiment: {row name: cell}}``, "the same" resolved."""
    text = (REPO / "docs" / "reproduction.md").read_text()
    lines = text[text.index("## The paper's settings"):].splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[first:end]
            if not ln.startswith("|---")]
    header, body = rows[0], rows[1:]
    table: dict[str, dict[str, str]] = {}
    for col, title in enumerate(header[1:], start=1):
        names = re.findall(r"\w+", title.split("(")[1]) if "(" in title else [title]
        for name in names:
            cells = {}
            for r in body:
                cell = r[col]
                if cell.startswith("the same as "):  # "the same as latent": that column's cell
                    cell = r[next(i for i, h in enumerate(header) if h.startswith(cell[len("the same as "):]))]
                elif cell == "the same":
                    cell = r[col - 1]
                cells[r[0]] = cell
            table[next(e for e in EXPERIMENTS if e.startswith(name))] = cells
    return table


def _from_settings(cells: dict[str, str]) -> dict:
    """The config values one column of the settings table states."""
    out = {}
    m = re.search(r"UniPC-(\d) (bh\d), NFE (\d+)", cells["teacher"])
    out.update({"teacher.solver.name": "unipc", "teacher.solver.order": int(m.group(1)),
                "teacher.solver.variant": m.group(2), "teacher.nfe": int(m.group(3))})
    code = re.search(r"`(\w+)`", cells["teacher"])
    out["teacher.discretization"] = code.group(1) if code else (
        "time_uniform" if "time-uniform" in cells["teacher"] else "edm" if "EDM" in cells["teacher"] else None)
    out["solver.order"] = int(re.search(r"order (\d)", cells["student solvers"]).group(1))
    out["solver.variant"] = re.search(r"bh\d", cells["student solvers"]).group(0)
    if "lower_order_final: true" in cells["final steps"]:
        out["solver.lower_order_final"] = out["teacher.solver.lower_order_final"] = True
    param, start = (s.strip() for s in cells["grid parameterization, start"].split(","))
    out["train.param"] = {"log-SNR": "lambda", "native time": "time"}[param]
    out["train.init"] = {"uniform log-SNR": "logsnr", "time-uniform": "time_uniform"}[start]
    n, train, valid = map(int, re.match(r"(\d+) \((\d+) / (\d+)\)", cells["teacher pairs"]).groups())
    assert train + valid == n
    out.update({"teacher.n": n, "train.val_fraction": valid / n})
    batch, it1, it2 = map(int, re.match(r"(\d+), (\d+) \+ (\d+)", cells["batch, iterations (phase 1 + 2)"]).groups())
    out.update({"train.batch_size": batch, "train.iters_phase1": it1, "train.iters_phase2": it2})
    opt, lr = re.match(r"(\w+), ([\d.]+) / NFE", cells["decoupled offsets"]).groups()
    out.update({"train.offsets_optimizer": opt.lower(), "train.lr_offsets": float(lr),
                "train.offset_units": "official"})
    out["train.loss"] = "lpips" if cells["loss"].startswith("LPIPS") else None
    out["sample.n"] = int(re.match(r"[\d,]+", cells["samples for FID"]).group(0).replace(",", ""))
    return out


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "mnist_paper"])
def test_experiment_matches_the_documented_settings_table(experiment):
    table = settings_table()
    assert set(table) == set(EXPERIMENTS) - {"mnist_paper"}  # every paper setup has its column
    want = _from_settings(table[experiment])
    cfg = composed(experiment)
    assert {k: lookup(cfg, k) for k in want} == want


def test_mnist_paper_follows_cifar10_except_where_a_line_says_why():
    """The official code has no MNIST config: a line citing cifar10.yml holds cifar10_paper's value; every value
    that differs from cifar10_paper says on its line why (not the paper, a CPU budget ...)."""
    mnist, cifar = composed("mnist_paper"), composed("cifar10_paper")
    lines = value_lines("mnist_paper")
    differ = {k for k in lines if OmegaConf.select(cifar, k) is not None and lookup(mnist, k) != lookup(cifar, k)}
    assert differ, "mnist_paper is cifar10_paper on another model: at least its loss and budgets differ"
    for key, comment in lines.items():
        if comment.startswith("cifar10.yml"):
            assert key not in differ, f"{key}: cites cifar10.yml but differs from cifar10_paper"
    assert all(not lines[k].startswith(("cifar10.yml", "gen_data.sh: uni_pc")) for k in differ), differ


def header_sweep(experiment) -> tuple[list[str], list[int]]:
    """The solvers and NFEs of the multirun the file's header comment gives (``ld3 train -m ...``)."""
    text = (config_dir() / "experiment" / f"{experiment}.yaml").read_text()
    m = re.search(r"ld3 train -m experiment=\w+ solver=([\w,]+) nfe=([\d,]+)", text)
    assert m, f"{experiment}: no `ld3 train -m experiment=... solver=... nfe=...` line in its header"
    return m.group(1).split(","), [int(v) for v in m.group(2).split(",")]


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "mnist_paper"])
def test_the_header_sweep_is_valid_and_covers_the_published_nfes(experiment):
    """Every job of the sweep composes and passes the stage checks (each solver at each NFE, with the experiment's
    order); its NFEs include the experiment's own and every NFE of the paper's published FID table."""
    from ld3_cli.cli.preflight import check_overrides

    solvers, nfes = header_sweep(experiment)
    assert check_overrides("train", [f"experiment={experiment}", f"solver={','.join(solvers)}",
                                     f"nfe={','.join(map(str, nfes))}"], multirun=True, files=False) is None
    assert composed(experiment).nfe in nfes
    setup = experiment[:-len("_paper")]
    with (REPO / "ld3_cli" / "data" / "published_fid.csv").open() as f:
        published = {int(r["nfe"]) for r in csv.DictReader(ln for ln in f if not ln.startswith("#"))
                     if r["dataset"].startswith(setup)}
    assert published <= set(nfes), (experiment, sorted(published))


def test_cfg_job_shows_the_experiment_values():
    """What a user sees: `ld3 train experiment=cifar10_paper --cfg job` prints what the Compose API composes, each
    value the experiment sets as a plain value (not an interpolation); the old `+experiment=` spelling is the same."""
    outs = [subprocess.run([sys.executable, "-m", "ld3_cli", "train", f"{plus}experiment=cifar10_paper", "--cfg",
                            "job"], capture_output=True, text=True, check=True).stdout for plus in ("", "+")]
    assert outs[0] == outs[1]
    shown = OmegaConf.create(yaml.safe_load(outs[0]))
    cfg = composed("cifar10_paper")
    for section in ("model", "dataset", "solver", "teacher", "train", "sample", "eval"):
        assert OmegaConf.to_container(shown[section]) == OmegaConf.to_container(cfg[section]), section
    for key in value_lines("cifar10_paper"):
        assert "${" not in str(lookup(shown, key)), key


def test_an_experiment_overrides_the_stage_defaults_and_the_command_line_overrides_it():
    """experiment= comes last in base.yaml's defaults: its values beat every group default; command-line
    overrides beat the experiment."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        plain = compose("train")
    cifar = composed("cifar10_paper")
    assert (plain.model.name, plain.train.loss) != (cifar.model.name, cifar.train.loss)
    assert cifar.train.loss == "lpips" and cifar.nfe == 10
    again = composed("cifar10_paper", "nfe=4", "train.loss=l2")
    assert again.nfe == 4 and again.train.loss == "l2" and again.model.name == cifar.model.name


def test_a_sweep_over_solvers_gives_each_solver_only_its_own_options(tmp_path):
    """The experiment sets UniPC's variant for the whole sweep; DPM-Solver++ and iPNDM take what they know."""
    for name, want in (("dpmpp", {"order": 3, "lower_order_final": True}), ("ipndm", {"order": 3}),
                       ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": True})):
        cfg = composed("cifar10_paper", f"solver={name}", f"cache_dir={tmp_path}", "device=cpu")
        opts = StageContext(cfg, "train").solver_options  # what the stages pass to the solver
        assert {k: opts[k] for k in want} == want
        assert set(opts) <= {"order", "variant", "lower_order_final", "corrector", "solver_type", "coefficients",
                             "analytic_first"}
        if name != "unipc":
            assert "variant" not in opts


def test_the_learned_solver_preset_changes_only_what_is_learned_phase_3_and_the_pairs():
    """`train=learned_solver` runs LD3's phases as `ld3 train solver.analytic_first=true` does (its LD3 part is what
    it is compared with): of the train options only `learn` and phase 3's own differ from the default; the teacher
    makes more pairs."""
    from ld3_cli.ld3.options import COEFFICIENTS

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        base = OmegaConf.to_container(compose("train").train, resolve=True)
        preset = compose("train", overrides=["train=learned_solver"])
    got = OmegaConf.to_container(preset.train, resolve=True)
    phase3 = {o.name for o in COEFFICIENTS.options} | {"iters_phase3"}
    assert {k for k in got if got[k] != base.get(k)} - phase3 == {"learn"}
    assert preset.solver.analytic_first is True  # the student solver's first step is analytic: LD3's part too
    assert got["learn"] == ["steps", "offsets", "coefficients"] and preset.teacher.n == 1000


def test_the_guided_preset_is_the_learned_solver_preset_with_three_changes():
    """`train=learned_solver_guided` is `train=learned_solver` without the analytic first step, with the pseudo-Huber
    loss and the first evaluation's time learned (what the guided grid measured), and nothing else."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        plain = compose("train", overrides=["train=learned_solver"])
        guided = compose("train", overrides=["train=learned_solver_guided"])
    a, b = (OmegaConf.to_container(c, resolve=True) for c in (plain, guided))
    changed = {f"{g}.{k}" for g in a if isinstance(a[g], dict) for k in a[g] if a[g][k] != b[g].get(k)}
    assert changed == {"solver.analytic_first", "train.loss", "train.decouple_first"}
    assert (b["solver"]["analytic_first"], b["train"]["loss"], b["train"]["decouple_first"]) == (
        False, "pseudo_huber", True)
    assert {k for k in a if a[k] != b[k]} == {"solver", "train"}


def test_the_residual_preset_is_the_learned_solver_preset_with_phase_4():
    """`train=learned_solver_residual` is `train=learned_solver` with the residual operator learned last (phase 4, at
    the residual options' defaults), and nothing else."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        plain = compose("train", overrides=["train=learned_solver"])
        residual = compose("train", overrides=["train=learned_solver_residual"])
    a, b = (OmegaConf.to_container(c, resolve=True) for c in (plain, residual))
    assert {k for k in a if a[k] != b[k]} == {"train"}
    assert {k for k in a["train"] if a["train"][k] != b["train"][k]} == {"learn"}
    assert b["train"]["learn"] == a["train"]["learn"] + ["residual"] == ["steps", "offsets", "coefficients", "residual"]
