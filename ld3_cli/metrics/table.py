"""The printed comparison table of ``ld3 eval``: one row per schedule, the best value of each column starred."""
from __future__ import annotations

from .suite import HIGHER_IS_BETTER


def format_table(rows: list[dict], metrics: list[str], unranked: frozenset = frozenset()) -> str:
    """``schedule | NFE | <metrics>`` rows (``-`` where a row lacks a metric); ``*`` marks the lowest value.

    Columns in :data:`~ld3_cli.metrics.suite.HIGHER_IS_BETTER` and in ``unranked`` (metrics that do not rank
    the schedules, e.g. one dominated by the model's own error) are not starred.
    """
    head = ["schedule", "NFE"] + metrics
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    skip = HIGHER_IS_BETTER | unranked
    best = {m: min((r[m] for r in rows if m in r and m not in skip), default=None) for m in metrics}
    for r in rows:
        cells = [r["schedule"], str(r["nfe"])]
        for m in metrics:
            v = r.get(m)
            cell = "-" if v is None else (f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}")
            if v is not None and best.get(m) is not None and v == best[m]:
                cell += " *"
            cells.append(cell)
        lines.append(" | ".join(cells))
    return "\n".join(lines)
