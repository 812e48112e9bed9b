"""Tiny inline-SVG charts, so that the report needs no plotting library and stays one file."""
from __future__ import annotations

import html

import numpy as np

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def color(i: int) -> str:
    if i < len(PALETTE):
        return PALETTE[i]
    return f"hsl({(i * 47) % 360},60%,45%)"


def _frame(w, h, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img"><title>{html.escape(title)}</title>'
            f'<rect width="{w}" height="{h}" fill="white"/>{body}</svg>')


def _scale(v, lo, hi, a, b):
    return a + (b - a) * (0.5 if hi == lo else (v - lo) / (hi - lo))


def lines(series: dict[str, tuple[list, list]], title: str, w=420, h=240, ylabel="") -> str:
    """Line chart of named (x, y) series."""
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y is not None]
    if not pts:
        return ""
    xs, ys = zip(*pts)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    L, R, T, B = 50, w - 10, 25, h - 30
    body = [f'<text x="{w / 2}" y="15" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
            f'<line x1="{L}" y1="{B}" x2="{R}" y2="{B}" stroke="#888"/>',
            f'<line x1="{L}" y1="{T}" x2="{L}" y2="{B}" stroke="#888"/>',
            f'<text x="{L - 4}" y="{T + 4}" text-anchor="end" font-size="10">{y1:.3g}</text>',
            f'<text x="{L - 4}" y="{B}" text-anchor="end" font-size="10">{y0:.3g}</text>',
            f'<text x="{R}" y="{h - 12}" text-anchor="end" font-size="10">{x1:g}</text>',
            f'<text x="{L}" y="{h - 12}" font-size="10">{x0:g}</text>',
            f'<text x="12" y="{(T + B) / 2}" font-size="10" transform="rotate(-90 12 {(T + B) / 2})">'
            f'{html.escape(ylabel)}</text>']
    for k, (name, (sx, sy)) in enumerate(series.items()):
        p = " ".join(f"{_scale(x, x0, x1, L, R):.1f},{_scale(y, y0, y1, B, T):.1f}"
                     for x, y in zip(sx, sy) if y is not None)
        body.append(f'<polyline fill="none" stroke="{color(k)}" stroke-width="1.5" points="{p}"/>')
        body.append(f'<text x="{R - 5}" y="{T + 12 + 12 * k}" text-anchor="end" font-size="10" '
                    f'fill="{color(k)}">{html.escape(name)}</text>')
    return _frame(w, h, "".join(body), title)


def bars(values: list[float], labels: list[str], title: str, w=420, h=220) -> str:
    L, R, T, B = 40, w - 10, 25, h - 40
    top = max(values) or 1
    bw = (R - L) / max(1, len(values))
    body = [f'<text x="{w / 2}" y="15" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for i, (v, lab) in enumerate(zip(values, labels)):
        x, y = L + i * bw, _scale(v, 0, top, B, T)
        body.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{B - y:.1f}" '
                    f'fill="{color(i)}"><title>{html.escape(lab)}: {v:g}</title></rect>')
        body.append(f'<text x="{x + bw / 2:.1f}" y="{B + 12}" text-anchor="middle" font-size="9">'
                    f'{html.escape(lab[:10])}</text>')
        body.append(f'<text x="{x + bw / 2:.1f}" y="{y - 2:.1f}" text-anchor="middle" font-size="9">'
                    f'{v:g}</text>')
    return _frame(w, h, "".join(body), title)


def scatter(xy: np.ndarray, groups: np.ndarray, names: dict, title: str, w=420, h=420) -> str:
    L, R, T, B = 10, w - 10, 25, h - 10
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    body = [f'<text x="{w / 2}" y="15" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for (x, y), g in zip(xy, groups):
        body.append(f'<circle cx="{_scale(x, x0, x1, L, R):.1f}" cy="{_scale(y, y0, y1, B, T):.1f}" '
                    f'r="1.8" fill="{color(int(g))}" fill-opacity="0.7"/>')
    for k, g in enumerate(sorted(set(groups.tolist()))[:20]):
        body.append(f'<text x="{R}" y="{T + 12 + 11 * k}" text-anchor="end" font-size="10" '
                    f'fill="{color(int(g))}">{html.escape(str(names.get(g, g)))}</text>')
    return _frame(w, h, "".join(body), title)
