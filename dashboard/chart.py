"""The node's usage over the last hour as inline SVG, drawn here (no script, no
library): two lines, instances and memory allowed, each on its own scale."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 600, 160, 30
HOUR = 3600


def usage_svg(samples: list[dict[str, Any]], now: float | None = None) -> Markup:
    """An SVG of `samples` ({at, instances, memory_mb}), the last hour, oldest left."""
    if not samples:
        return Markup(
            '<p class="note" id="usage-empty">No samples yet: one is taken each minute.</p>'
        )
    end = now if now is not None else max(int(s["at"]) for s in samples)
    start = end - HOUR
    shown = [s for s in samples if int(s["at"]) >= start]
    most_n = max([int(s["instances"]) for s in shown] + [1])
    most_mb = max([int(s["memory_mb"]) for s in shown] + [1])

    def x(at: int) -> float:
        return PAD + (at - start) / HOUR * (WIDTH - 2 * PAD)

    def y(v: int, top: int) -> float:
        return HEIGHT - PAD - v / top * (HEIGHT - 2 * PAD)

    def line(key: str, top: int) -> str:
        return " ".join(f"{x(int(s['at'])):.1f},{y(int(s[key]), top):.1f}" for s in shown)

    last = shown[-1] if shown else samples[-1]
    title = escape(
        f"last hour: now {int(last['instances'])} instances, {int(last['memory_mb'])} MB allowed"
    )
    parts = [
        f'<svg id="usage" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}">',
        f"<title>{title}</title>",
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" '
        'fill="none" stroke="#ccc"/>',
        f'<polyline class="instances" fill="none" stroke="#2a7" stroke-width="2" '
        f'points="{line("instances", most_n)}"/>',
        f'<polyline class="memory" fill="none" stroke="#36c" stroke-width="2" '
        f'stroke-dasharray="5,3" points="{line("memory_mb", most_mb)}"/>',
        f'<text x="{PAD}" y="{PAD - 8}" font-size="11" fill="#2a7">instances (max {most_n})</text>',
        f'<text x="{WIDTH - PAD}" y="{PAD - 8}" font-size="11" fill="#36c" text-anchor="end">'
        f"memory allowed, MB (max {most_mb})</text>",
        f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11" fill="#666">-60 min</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" font-size="11" fill="#666" '
        'text-anchor="end">now</text>',
        "</svg>",
    ]
    return Markup("".join(parts))
