"""The results table of a store: ``<root>/results.csv`` (every row ever appended) and ``results.md``.

One row per (model, solver, NFE, schedule, metric); rows are appended under the store's lock and
``results.md`` (the :data:`MARKDOWN_COLUMNS` as a markdown table) is regenerated from the whole csv,
both written atomically.  Columns: ``n`` is the number of samples behind the value (the held-out
noises for teacher distances, the samples for FID / pixel Frechet distances); ``loss`` the loss that
trained the schedule, ``schedule_key`` its store key, ``train_seed`` and ``learn`` (``train.seed``,
``train.learn``) what tells two trainings apart (all empty for baselines, which are not trained);
``model_key`` the model's store key (it tells, e.g., two guidance scales apart).  A learned row's
``schedule`` says what was learned: ``ld3`` (time steps and decoupled times, the default), else
``ld3[<learn>]`` (``ld3[steps,offsets,coefficients]``: the learned solver).  A csv written with other
columns is rewritten with these (missing values empty).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .artifact import Store
from .files import atomic_write_text

RESULT_COLUMNS = ["date", "model", "dataset", "solver", "order", "nfe", "schedule", "metric", "value", "n", "loss",
                  "samples_key", "eval_key", "schedule_key", "detector", "train_seed", "learn", "model_key"]
LD3_DEFAULT_LEARN = ("steps", "offsets")


def learned_schedule_name(learn) -> str:
    """``ld3`` for LD3's own learning (time steps and decoupled times), else ``ld3[<what was learned>]``."""
    learn = tuple(learn)
    return "ld3" if learn == LD3_DEFAULT_LEARN else "ld3[" + ",".join(learn) + "]"
MARKDOWN_COLUMNS = RESULT_COLUMNS[:11]


def append_results(store: Store, rows: list[dict]) -> Path:
    """Append ``rows`` (dicts keyed by :data:`RESULT_COLUMNS`) to ``results.csv``; regenerate ``results.md``."""
    root = store.root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.csv"
    with store.lock("_results", "csv", "results"):
        all_rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []
        all_rows += rows
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for r in all_rows:
            w.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})
        atomic_write_text(path, buf.getvalue())
        md = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
        md += ["| " + " | ".join(str(r.get(k, "")) for k in MARKDOWN_COLUMNS) + " |" for r in all_rows]
        atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    return path
