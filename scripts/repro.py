"""Reproduce the LD3 paper's tables with the ld3 stages: ``make repro-<setup>`` runs this.

    python scripts/repro.py cifar10                 # check files, then teacher -> train sweep -> eval sweep -> table
    python scripts/repro.py cifar10 --dry-run       # print the missing files and the commands, run nothing
    python scripts/repro.py mnist --nfe 4,5,6 -- sample.n=500    # narrower sweep, extra overrides for every command

Setups: mnist (the embedded mixture and the small real DDPM, CPU), cifar10, ffhq, afhqv2, lsun,
imagenet, sd15 (one GPU).  For each run of a setup:

1. **Files first.**  The model's weights (``model.path``), the FID reference statistics
   (``dataset.fid_ref``), the FID Inception weights and, for Stable Diffusion, the prompts file
   are looked up in the composed config.  If any is missing the script prints each one with where
   it goes and where it comes from, and exits with status 2 before computing anything.
2. ``ld3 teacher-sample experiment=<setup>_paper`` (the paper's settings are configuration:
   ``configs/experiment/<setup>_paper.yaml``, each value with its source in the official code);
3. ``ld3 train -m solver=dpmpp,unipc,ipndm nfe=4,...,10`` (Hydra multirun; each solver takes the
   experiment's solver options it knows, e.g. only UniPC takes ``variant``);
4. ``ld3 eval -m`` over the same grid (learned schedule and the baselines of the setup);
5. ``scripts/results_table.py``: the paper-style table (measured / published) and a PNG, written to
   ``<cache>/repro/<setup>.md`` and ``<cache>/repro/<setup>-<run>.png`` and printed.

Every stage reuses the store, so an interrupted or repeated ``make repro-...`` recomputes nothing
that is already there.  Heun is not in the sweeps (it only takes odd NFE).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
PAPER_NFES = (4, 5, 6, 7, 8, 9, 10)
PAPER_SOLVERS = ("dpmpp", "unipc", "ipndm")


@dataclass
class Run:
    """One model of a setup: a teacher, a train sweep and an eval sweep, then one table."""

    label: str
    overrides: list[str]                                  # experiment=..., model=..., budgets (every command)
    compare: Optional[list[str]] = None                   # eval.compare (None: the experiment config's)
    published: Optional[str] = None                       # dataset key in published_fid.csv
    default_schedule: Optional[str] = None                # our schedule shown beside the paper's "default"
    metrics: Optional[list[str]] = None                   # table metrics (None = the headline one)
    note: str = ""
    ref_hint: Optional[str] = None                        # where the FID statistics come from, if not in the config


@dataclass
class Setup:
    """One ``make repro-<name>`` target: its runs and the solver x NFE grid they sweep (``SETUPS`` is keyed by name)."""

    name: str
    description: str
    runs: list[Run]
    nfes: tuple = PAPER_NFES
    solvers: tuple = PAPER_SOLVERS


# The paper's settings live in configs/experiment/<setup>_paper.yaml (each value with its source in the official
# code); a run here only adds what the paper leaves open (the compare list, CPU budgets for mnist).
def _paper(name: str) -> list[str]:
    return [f"experiment={name}_paper"]


# CPU budgets of repro-mnist (documented in docs/reproduction.md).
_MNIST_SMALL = ["sample.n=1000", "eval.exact_n=5000", "eval.heldout_n=100"]
_MNIST_DDPM_SMALL = ["teacher.n=40", "teacher.check_n=4", "train.iters_phase1=20", "train.iters_phase2=30",
                     "train.batch_size=5", "sample.n=500", "eval.heldout_n=50"]

# The paper's LSUN statistics: ADM's reference batch (it holds mu and sigma, which ld3 reads as they are).
_LSUN_REF = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/lsun/bedroom/"
             "VIRTUAL_lsun_bedroom256.npz (ADM's reference batch, as in the paper)")

SETUPS = {s.name: s for s in (
    Setup(
        "mnist", "the embedded MNIST-5k mixture (exact denoiser) and the small real MNIST DDPM, on a CPU",
        [Run("mnist_gmm", ["model=mnist_gmm", "dataset=mnist5k", *_MNIST_SMALL],
             ["ld3", "time_uniform", "time_quadratic", "logsnr", "edm"], metrics=["fd_exact", "rmse"],
             note="pixel-space Frechet distance to exact samples of the mixture (solver error only), not FID"),
         Run("mnist_ddpm", [*_paper("mnist"), *_MNIST_DDPM_SMALL],
             ["ld3", "time_uniform", "logsnr", "edm"], metrics=["fd_data", "rmse"],
             note="the paper's pixel recipe (configs/experiment/mnist_paper.yaml) at CPU budgets; pixel-space "
                  "Frechet distance to the 5,000 MNIST digits, not FID")],
        nfes=(4, 5, 6)),
    Setup("cifar10", "EDM CIFAR-10 32x32 unconditional (VP)",
          [Run("edm_cifar10", _paper("cifar10"), published="cifar10", default_schedule="edm")]),
    Setup("ffhq", "EDM FFHQ 64x64 unconditional (VP)",
          [Run("edm_ffhq64", _paper("ffhq"), published="ffhq64", default_schedule="edm")]),
    Setup("afhqv2", "EDM AFHQv2 64x64 unconditional (VP)",
          [Run("edm_afhqv2", _paper("afhqv2"), published="afhqv2_64", default_schedule="edm")]),
    Setup("lsun", "latent diffusion LSUN-Bedroom 256 (LDM-4)",
          [Run("ldm_lsun_bedroom", _paper("lsun"), published="lsun_bedroom256", default_schedule="time_uniform",
               ref_hint=_LSUN_REF)]),
    Setup("imagenet", "class-conditional ImageNet 256 latent model (DiT-XL/2 here; LDM-4 in the paper)",
          [Run("dit_imagenet256", _paper("imagenet256"), published="imagenet256", default_schedule="time_uniform",
               note="the paper's numbers are for LDM-4 cin256-v2 (guidance 2.0), not DiT-XL/2: "
                    "compare trends, not values")]),
    Setup("sd15", "Stable Diffusion v1.5 on MS-COCO 2014 captions (guidance 7.5)",
          [Run("sd15", _paper("sd15"), note="no published FID table for this setup")]),
)}


# -- files ----------------------------------------------------------------------------------------
@dataclass
class Needed:
    what: str
    path: str
    source: str

    def line(self) -> str:
        return f"  - {self.what}:\n      put it at  {os.path.abspath(self.path)}\n      from       {self.source}"


def compose(overrides: list[str], config_name: str = "eval"):
    """The composed (and resolved) config for these overrides, nothing run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ld3_cli.cli.apps import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="repro"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def needed_files(overrides: list[str], ref_hint: Optional[str] = None) -> list[Needed]:
    """The missing files of one run's overrides: weights, prompts, FID statistics, Inception and LPIPS weights."""
    from omegaconf import OmegaConf

    cfg = compose(overrides)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    missing: list[Needed] = []
    path = model.get("path")
    if path and not Path(path).expanduser().exists():
        src = model.get("url") or "see the comments in configs/model/" + str(model.get("name"))
        hint = (f"{src} (or set model.path=/your/{model.get('file_name') or Path(path).name}; "
                "LD3_WEIGHTS=<folder> moves every weights path)")
        kind = "directory" if model.get("kind") == "diffusers" else "file"
        missing.append(Needed(f"model weights ({model.get('name')}, {kind})", str(path), hint))
    prompts = model.get("prompts_file")
    if prompts and not model.get("prompts") and not Path(prompts).expanduser().is_file():
        missing.append(Needed("prompts (MS-COCO 2014 val captions)", str(prompts),
                              f"{model.get('prompts_url')} (annotations/captions_val2014.json inside; "
                              "LD3_DATA=<folder> moves it)"))
    rgb_fid = dataset.get("kind") != "mnist5k" and str(cfg.eval.metrics) in ("auto", "fid")
    if rgb_fid:
        ref = dataset.get("fid_ref")
        if ref and not Path(ref).expanduser().is_file():
            url = dataset.get("fid_ref_url") or ref_hint
            src = url or (f"make it from the dataset's images: ld3 fid-ref dataset={dataset.get('name')} "
                          "fid_ref.source=/path/to/images (LD3_REFS=<folder> moves it)")
            missing.append(Needed(f"FID reference statistics ({dataset.get('name')})", str(ref), src))
        from ld3_cli.metrics.inception import FID_WEIGHTS_URL, default_inception_weights_path

        inc = cfg.eval.get("inception_weights") or default_inception_weights_path()
        if not Path(str(inc)).expanduser().is_file():
            missing.append(Needed("FID Inception weights (pytorch-fid)", str(inc), FID_WEIGHTS_URL))
    from ld3_cli.data.datasets import dataset_channels
    from ld3_cli.ld3.losses import loss_for
    from ld3_cli.metrics.lpips_loss import BACKBONES, default_backbone_path

    lp = cfg.train.get("lpips_weights") or default_backbone_path("vgg")
    if loss_for(str(cfg.train.loss), dataset_channels(dataset)) == "lpips" and not Path(str(lp)).expanduser().is_file():
        missing.append(Needed("LPIPS-VGG backbone (the paper's training loss; or add train.loss=l2)", str(lp),
                              BACKBONES["vgg"][1]))
    return missing


# -- commands -------------------------------------------------------------------------------------
def commands(setup: Setup, run: Run, nfes: tuple, solvers: tuple, extra: list[str],
             cache: Optional[str]) -> list[list[str]]:
    """The ``ld3`` argument lists of one run, in order."""
    common = list(run.overrides) + ([f"cache_dir={cache}"] if cache else []) + list(extra)
    nfe_sweep = "nfe=" + ",".join(str(n) for n in nfes)
    cmds = [["teacher-sample", *common]]
    for stage in ("train", "eval"):
        cmd = [stage, "-m", f"solver={','.join(solvers)}", nfe_sweep, *common]
        if stage == "eval" and run.compare:
            cmd.append("eval.compare=[" + ",".join(run.compare) + "]")
        cmds.append(cmd)
    return cmds


def show(args: list[str]) -> str:
    return "ld3 " + " ".join(shlex.quote(a) for a in args)


def cache_root(cache: Optional[str]) -> Path:
    return Path(cache or os.environ.get("LD3_CACHE") or "ld3-cache")


def run_ld3(args: list[str]) -> int:
    print(f"\n$ {show(args)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "ld3_cli", *args])
    print(f"  ({time.perf_counter() - t0:.0f}s, exit {rc})", flush=True)
    return rc


def render(setup: Setup, nfes: tuple, solvers: tuple, cache: Optional[str]) -> str:
    """The setup's tables from ``<cache>/results.csv`` (and PNGs), written under ``<cache>/repro/``."""
    import results_table

    from ld3_cli.store import atomic_write_text

    root = cache_root(cache)
    parts = [f"## repro-{setup.name}: {setup.description}", ""]
    for run in setup.runs:
        model_name = str(compose(run.overrides).model.get("name"))
        parts.append(results_table.report(root, model=model_name, metrics=run.metrics, published_key=run.published,
                                          default_schedule=run.default_schedule, title=run.label, nfes=list(nfes),
                                          solvers=list(solvers), plot=root / "repro" / f"{setup.name}-{run.label}.png"))
        if run.note:
            parts += [f"Note: {run.note}.", ""]
    text = "\n".join(parts)
    out = root / "repro" / f"{setup.name}.md"
    atomic_write_text(out, text)
    print(f"\ntable written to {out}")
    return text


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Reproduce an LD3 paper table with the ld3 stages.",
                                 epilog="Overrides after -- are passed to every ld3 command.")
    ap.add_argument("setup", choices=sorted(SETUPS))
    ap.add_argument("--nfe", help="comma-separated NFEs (default: the setup's; the paper's 4-10)")
    ap.add_argument("--solvers", help="comma-separated solvers (default: dpmpp,unipc,ipndm)")
    ap.add_argument("--cache", help="store root (default: $LD3_CACHE or ./ld3-cache)")
    ap.add_argument("--dry-run", action="store_true", help="print the missing files and the commands; run nothing")
    ap.add_argument("--check", action="store_true", help="only check the files (exit 2 when some are missing)")
    ap.add_argument("--table-only", action="store_true", help="only render the table from the existing results")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every command (after --)")
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse cannot take positionals after options (`--nfe 4,6 -- k=v`): split at `--` first
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.overrides = [*args.overrides, *extra]
    setup = SETUPS[args.setup]
    nfes = tuple(int(x) for x in args.nfe.split(",")) if args.nfe else setup.nfes
    solvers = tuple(args.solvers.split(",")) if args.solvers else setup.solvers
    if "heun" in solvers:
        print("repro: error: heun only takes odd NFE; leave it out of --solvers", file=sys.stderr)
        return 2
    if args.table_only:
        print(render(setup, nfes, solvers, args.cache))
        return 0

    missing: list[Needed] = []
    for run in setup.runs:
        missing += needed_files(run.overrides + list(args.overrides), run.ref_hint)
    if missing:
        print(f"repro-{setup.name}: {len(missing)} file(s) missing -- nothing was run:", file=sys.stderr)
        for need in missing:
            print(need.line(), file=sys.stderr)
        print(f"Put them there (or point the overrides at them), then rerun `make repro-{setup.name}`.",
              file=sys.stderr)
        if args.check or not args.dry_run:
            return 2
    elif args.check:
        print(f"repro-{setup.name}: all files present")
        return 0

    plan = [c for run in setup.runs for c in commands(setup, run, nfes, solvers, list(args.overrides), args.cache)]
    if args.dry_run:
        print(f"repro-{setup.name}: {setup.description}; solvers {','.join(solvers)}, NFE {','.join(map(str, nfes))}")
        for c in plan:
            print(show(c))
        return 0
    t0 = time.perf_counter()
    for c in plan:
        rc = run_ld3(c)
        if rc != 0:
            print(f"repro-{setup.name}: stopped: `{show(c)}` exited with status {rc}", file=sys.stderr)
            return rc
    print(render(setup, nfes, solvers, args.cache))
    print(f"repro-{setup.name} done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
