"""How the mesh benchmarks print a sample: median | p95 | max, in a Markdown table cell."""

from __future__ import annotations

import statistics


def quantiles(values: list[float]) -> str:
    """`median | p95 | max` of `values` (one decimal)."""
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{statistics.median(values):.1f} | {p95:.1f} | {values[-1]:.1f}"
