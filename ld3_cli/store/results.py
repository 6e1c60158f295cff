"""The results table of a store: ``<root>/results.csv`` (every row ever appended) and ``results.md``.

One row per (model, solver, NFE, schedule, metric); rows are appended under the store's lock and
``results.md`` (the first ten columns as a markdown table) is regenerated from the whole csv,
both written atomically.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .artifact import Store
from .files import atomic_write_text

RESULT_COLUMNS = ["date", "model", "dataset", "solver", "order", "nfe", "schedule", "metric", "value", "n",
                  "samples_key", "eval_key", "schedule_key", "detector"]
MARKDOWN_COLUMNS = RESULT_COLUMNS[:10]


def append_results(store: Store, rows: list[dict]) -> Path:
    """Append ``rows`` (dicts keyed by :data:`RESULT_COLUMNS`) to ``results.csv``; regenerate ``results.md``."""
    root = store.root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.csv"
    with store.lock("_results", "csv", "results"):
        existing = path.read_text() if path.is_file() else ""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS)
        if not existing:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})
        atomic_write_text(path, existing + buf.getvalue())
        all_rows = list(csv.DictReader(io.StringIO(path.read_text())))
        md = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
        md += ["| " + " | ".join(str(r.get(k, "")) for k in MARKDOWN_COLUMNS) + " |" for r in all_rows]
        atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    return path
