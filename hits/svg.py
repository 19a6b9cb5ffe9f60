"""Charts for the admin dashboard as server-rendered SVG: no script, no CDN, works offline.

Owns ``stacked_bars``: counts per bucket (hour, day) stacked per series (agency), with a y axis,
sparse x labels, a legend and a ``<title>`` tooltip per bar segment. Every text is escaped.
Must not import the resolver.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
OTHER = "#999999"


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def nice_max(v: int) -> int:
    """The axis top: ``v`` rounded up to 1, 2 or 5 times a power of ten."""
    if v <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if v <= m * step:
                return m * step
        step *= 10


def stacked_bars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    tick_every: int = 1,
    short: Sequence[str] | None = None,
    width: int = 640,
    height: int = 200,
) -> str:
    """An SVG of ``len(labels)`` stacked bars; ``series`` maps a name to one count per label.
    ``short`` are the x labels printed (every ``tick_every``-th); ``labels`` go in tooltips."""
    left, right, top, bottom = 44, 8, 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    ymax = nice_max(max(totals, default=0))
    slot = plot_w / n
    bar = max(slot * 0.8, 1.0)
    colours = {name: PALETTE[i] if i < len(PALETTE) else OTHER for i, name in enumerate(series)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{_esc(chart_id)}" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="{_esc(chart_id)}-title">',
        f'<title id="{_esc(chart_id)}-title">{_esc(title)}</title>',
    ]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="gridline"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{int(ymax * frac)}</text>')
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for name, counts in series.items():
            c = counts[i]
            if c <= 0:
                continue
            h = plot_h * c / ymax
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colours[name]}">'
                f"<title>{_esc(label)}: {_esc(name)} {c}</title></rect>"
            )
        if short is not None and i % tick_every == 0:
            parts.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" class="tick">'
                f"{_esc(short[i])}</text>"
            )
    lx = left
    for name, colour in colours.items():
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 5}" class="legend">{_esc(name)}</text>')
        lx += 24 + 7 * len(name)
    if not series:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="tick">no hits</text>')
    parts.append("</svg>")
    return "".join(parts)
