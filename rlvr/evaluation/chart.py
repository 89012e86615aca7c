"""The comparison chart: every stage's accuracy, format compliance, pass@k and completion length in one PNG.

matplotlib is optional (the `report` extra), so it is imported inside these functions only. Figures
are drawn on their own Agg canvas rather than through pyplot: no global figure list to leak into,
and the user's interactive backend is left alone.

Bar heights are the result dict's own numbers (fractions in [0, 1], shown as percent on the axis),
so the chart and `comparison_table` can never disagree; a metric a stage lacks is drawn at 0 and
labelled '–'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.errors import RlvrError

DPI = 150
MISSING = "–"


@dataclass(frozen=True)
class Bar:
    """One bar of the left panel: a metric of one stage, with its 95% interval when it has one."""

    metric: str
    value: float | None
    ci95: tuple[float, float] | None = None


def chart_bars(results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Bar]]:
    """Per stage, the bars of the left panel in group order: accuracy, format, then pass@k for every k."""
    ks = sorted({int(k) for r in results.values() for k in r.get("pass_at_k", {})})
    out = {}
    for stage, r in results.items():
        bars = [Bar("accuracy", r.get("accuracy")), Bar("format", r.get("format"))]
        for k in ks:
            entry = r.get("pass_at_k", {}).get(str(k)) or {}
            ci = entry.get("ci95")
            bars.append(Bar(f"pass@{k}", entry.get("mean"), tuple(ci) if ci else None))
        out[stage] = bars
    return out


def comparison_figure(results: Mapping[str, Mapping[str, Any]]):
    """A matplotlib Figure: grouped bars per metric (one bar per stage) and mean completion length.

    The left axes hold one BarContainer per stage, labelled with the stage name, in `results` order;
    the right axes hold one BarContainer of mean lengths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise RlvrError("comparison chart: no stage results to draw; evaluate at least one stage")
    bars = chart_bars(results)
    stages = list(results)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    scores, lengths = fig.subplots(1, 2, width_ratios=[3.2, 1])
    colors = [f"C{i % 10}" for i in range(len(stages))]
    _draw_scores(scores, bars, colors)
    _draw_lengths(lengths, results, colors)
    fig.suptitle(_title(results), fontsize=10)
    return fig


def save_chart(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Draw `comparison_figure(results)` to a PNG at `path`; raises ImportError without matplotlib."""
    path = Path(path)
    fig = comparison_figure(results)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise RlvrError(f"cannot write the comparison chart to {path} ({e.strerror}); choose a writable "
                        "--output-dir") from None
    return path


def _draw_scores(ax, bars: dict[str, list[Bar]], colors: list[str]) -> None:
    from matplotlib.ticker import PercentFormatter

    groups = [b.metric for b in next(iter(bars.values()))]
    width = 0.8 / len(bars)
    for i, (stage, row) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        heights = [b.value if b.value is not None else 0.0 for b in row]
        ax.bar(xs, heights, width * 0.92, color=colors[i], label=stage)
        _draw_intervals(ax, xs, row)
        for x, b in zip(xs, row):
            top = max(b.ci95[1] if b.ci95 else 0.0, b.value or 0.0)
            label = MISSING if b.value is None else f"{100 * b.value:.1f}%"
            ax.text(x, top + 0.015, label, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.12)  # head room for the labels above a 100% bar
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_ylabel("problems / samples (error bars: 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", ncols=min(len(bars), 4), fontsize=8, frameon=False)
    ax.set_title("accuracy, format compliance, pass@k (unbiased)", fontsize=9)


def _draw_intervals(ax, xs: list[float], row: list[Bar]) -> None:
    # Only pass@k has an interval; drawing zero-length bars for the rest would leave stray caps.
    pts = [(x, b) for x, b in zip(xs, row) if b.ci95 is not None and b.value is not None]
    if not pts:
        return
    x = [p[0] for p in pts]
    y = [b.value for _, b in pts]
    low = [max(0.0, b.value - b.ci95[0]) for _, b in pts]
    high = [max(0.0, b.ci95[1] - b.value) for _, b in pts]
    ax.errorbar(x, y, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.9, capsize=3)


def _draw_lengths(ax, results: Mapping[str, Mapping[str, Any]], colors: list[str]) -> None:
    values = [r.get("mean_length") for r in results.values()]
    heights = [v if v is not None else 0.0 for v in values]
    ax.bar(range(len(values)), heights, 0.7, color=colors, label="mean length")
    for x, v in enumerate(values):
        ax.text(x, (v or 0.0), MISSING if v is None else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(values)), list(results), rotation=20 if len(values) > 3 else 0)
    ax.set_ylim(0, max(heights + [1.0]) * 1.15)
    ax.set_ylabel("generated tokens")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("mean completion length", fontsize=9)


def _title(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The settings every stage shared, so the chart says what was compared."""
    first = next(iter(results.values()))
    cfg = first.get("config") or {}
    sampling = (f"temperature {cfg.get('temperature')}, top_p {cfg.get('top_p')}" if cfg.get("do_sample")
                else "greedy")
    n = first.get("samples_per_problem", "?")
    parts = [f"{first.get('problems', '?')} problems × {n} sample{'' if n == 1 else 's'}", sampling]
    if cfg:
        parts += [f"max {cfg.get('max_new_tokens')} new tokens", f"seed {cfg.get('seed')}"]
    return "evaluation (same problems and sampling for every stage): " + ", ".join(parts)
