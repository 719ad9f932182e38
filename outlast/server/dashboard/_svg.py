"""Charts as inline SVG, rendered on the server: no script, no front-end build. Each bar
carries a <title>, which browsers show on hover."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

from markupsafe import Markup

PALETTE = ["#4f6bed", "#e8833a", "#2a9d8f", "#c44e8a", "#8a6d3b", "#7a7a7a"]


def stacked_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    fmt: Callable[[float], str],
    *,
    width: int = 720,
    height: int = 180,
    title: str = "",
) -> Markup:
    """One bar per label, stacked by series (in the order given; colours in that order)."""
    n = max(len(labels), 1)
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = max(totals, default=0.0) or 1.0
    left, bottom = 48, 20
    plot_h = height - bottom - 8
    slot = (width - left) / n
    bar = max(1.0, slot * 0.8)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="{left - 4}" y="12" text-anchor="end" class="axis">{escape(fmt(top))}</text>',
        f'<line x1="{left}" y1="{8 + plot_h}" x2="{width}" y2="{8 + plot_h}" class="axis-line"/>',
    ]
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar) / 2
        y = 8.0 + plot_h
        for k, (name, values) in enumerate(series.items()):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(label)} · {escape(name)}: '
                f"{escape(fmt(v))}</title></rect>"
            )
        if n <= 16 or i % max(1, n // 8) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                f'class="axis">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(
    items: Sequence[tuple[str, float]],
    fmt: Callable[[float], str],
    *,
    width: int = 720,
    row: int = 22,
    title: str = "",
) -> Markup:
    """Horizontal bars, largest first as given, each with its name and value."""
    top = max((v for _, v in items), default=0.0) or 1.0
    label_w = 220
    height = row * max(len(items), 1) + 4
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, (name, v) in enumerate(items):
        y = i * row + 2
        w = (width - label_w - 90) * v / top
        parts.append(
            f'<text x="{label_w - 6}" y="{y + row * 0.65:.1f}" text-anchor="end" class="axis">'
            f"{escape(name[:32])}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 8}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(name)}: {escape(fmt(v))}</title>'
            f'</rect><text x="{label_w + max(w, 1) + 6:.1f}" y="{y + row * 0.65:.1f}" '
            f'class="axis">{escape(fmt(v))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
