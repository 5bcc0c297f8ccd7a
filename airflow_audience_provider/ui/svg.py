"""Small server-rendered SVG line plots: one point per event, each a link to its DAG run."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

COLOURS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5")
WIDTH, HEIGHT = 460, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 24, 28


@dataclass
class Series:
    """One line of a plot: its name and one value per x position."""

    name: str
    values: list[Any]  # one per x position; None where the event did not report it


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value:.0%}"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.2f}"


def line_plot(series: list[Series], labels: list[str], hrefs: list[str | None], *, percent: bool = False) -> str:
    """An inline ``<svg>``: a polyline and ``<circle class="point">`` per known value of each series.

    :param labels: the x label (time) of each position, shown as the point's tooltip.
    :param hrefs: the DAG run of each position; each point links to it.
    """
    known = [
        (i, float(v)) for s in series for i, v in enumerate(s.values) if isinstance(v, int | float) and v is not None
    ]
    if not known:
        return '<p class="muted no-data">No data reported yet.</p>'
    count = max(len(labels), 1)
    lo = min(0.0, *(v for _, v in known))
    hi = max(v for _, v in known)
    if percent:
        lo, hi = 0.0, max(1.0, hi)
    if hi == lo:
        hi = lo + 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if count == 1 else plot_w * i / (count - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg class="plot-svg" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#a0aec0"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#a0aec0"/>',
    ]
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end" fill="#4a5568">'
            f"{_fmt(tick, percent)}</text>"
        )
    if labels:
        parts.append(
            f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="11" fill="#4a5568">{html.escape(labels[0][:16])}</text>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" font-size="11" text-anchor="end" fill="#4a5568">'
            f"{html.escape(labels[-1][:16])}</text>"
        )
    legend_x = LEFT + 8
    for number, s in enumerate(series):
        colour = COLOURS[number % len(COLOURS)]
        points = [(i, float(v)) for i, v in enumerate(s.values) if isinstance(v, int | float)]
        if not points:
            continue
        parts.append(f'<g class="series" data-series="{html.escape(s.name)}">')
        if len(points) > 1:
            coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for i, v in points:
            tip = f"{s.name}: {_fmt(v, percent)} at {labels[i] if i < len(labels) else ''}"
            dot = (
                f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="4" fill="{colour}">'
                f"<title>{html.escape(tip)}</title></circle>"
            )
            href = hrefs[i] if i < len(hrefs) else None
            parts.append(f'<a data-airflow href="{html.escape(href)}">{dot}</a>' if href else dot)
        parts.append("</g>")
        parts.append(
            f'<text x="{legend_x}" y="{TOP - 10}" font-size="11" fill="{colour}">● {html.escape(s.name)}</text>'
        )
        legend_x += 12 + 7 * len(s.name) + 14
    parts.append("</svg>")
    return "".join(parts)
