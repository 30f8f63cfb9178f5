"""A self-contained HTML page of scored class averages (``biocnn select``'s ``report.html``).

Everything is inline: thumbnails are base64 PNGs written by a small encoder here (8-bit
grey, zlib), the score histogram is an SVG, the style a ``<style>`` block; no script, no
external resource, so the page opens from disk in any browser without a server.

Example
-------
    >>> rows = [ClassRow(index=1, name="000001@classes.mrcs", score=0.93, good=True,
    ...                  count=1200, image=np.zeros((64, 64)))]
    >>> write_html_report("report.html", rows, threshold=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biocnn.atomic import atomic_path

__all__ = ["ClassRow", "png_bytes", "histogram_svg", "render_report", "write_html_report"]

#: Frame colours of kept and rejected classes (colour-blind safe blue/orange).
GOOD_COLOUR, BAD_COLOUR = "#1f77b4", "#e66100"


@dataclass
class ClassRow:
    """One class average as the report shows it."""

    index: int  # 1-based class number in the input
    name: str
    score: float  # P(good)
    good: bool
    count: int | None  # particles in the class, when known
    image: np.ndarray  # (H, W) original pixels
    note: str = ""  # e.g. an out-of-distribution reason


def png_bytes(image: np.ndarray, size: int = 96) -> bytes:
    """``(H, W)`` float image -> 8-bit greyscale PNG of ``size`` px on its longer side.

    Grey levels span the 1st-99th percentile (a hot pixel does not flatten the image);
    nearest-neighbour resampling keeps it dependency-free.
    """
    img = np.asarray(image, dtype=np.float64)
    img = np.where(np.isfinite(img), img, 0.0)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    h, w = scaled.shape
    scale = size / max(h, w)
    rows = np.minimum((np.arange(max(1, round(h * scale))) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(max(1, round(w * scale))) / scale).astype(int), w - 1)
    pixels = (scaled[np.ix_(rows, cols)] * 255 + 0.5).astype(np.uint8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def histogram_svg(scores: Sequence[float], threshold: float, bins: int = 20,
                  width: int = 480, height: int = 180) -> str:
    """An inline SVG histogram of ``scores`` in [0, 1], bars coloured by the side of
    ``threshold`` their centre lies on, and the threshold as a dashed vertical line."""
    counts, edges = np.histogram(np.clip(np.asarray(scores, float), 0, 1), bins=bins, range=(0, 1))
    left, bottom, top, right = 40, 30, 10, 10
    pw, ph = width - left - right, height - top - bottom
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    parts = [f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="histogram of P(good)">']
    for c, a, b in zip(counts.tolist(), edges[:-1], edges[1:], strict=True):
        x, bw = left + a * pw, (b - a) * pw
        bh = c / peak * ph
        colour = GOOD_COLOUR if (a + b) / 2 >= threshold else BAD_COLOUR
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{top + ph - bh:.1f}" width="{bw - 1:.1f}" '
                     f'height="{bh:.1f}" fill="{colour}"><title>{a:.2f}-{b:.2f}: {c}</title></rect>')
    tx = left + threshold * pw
    parts += [
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
        f'<line id="threshold" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" '
        'stroke="#000" stroke-width="2" stroke-dasharray="5,3"/>',
        f'<text x="{tx + 4:.1f}" y="{top + 12}" font-size="11">threshold {threshold:g}</text>',
        f'<text x="{left}" y="{height - 8}" font-size="11">0</text>',
        f'<text x="{left + pw - 6}" y="{height - 8}" font-size="11">1</text>',
        f'<text x="{left + pw / 2 - 20:.0f}" y="{height - 8}" font-size="11">P(good)</text>',
        f'<text x="4" y="{top + 10}" font-size="11">{peak}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


_STYLE = f"""
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.summary td {{ padding: 0 1em 0 0; }}
.warning {{ background: #fff3cd; border: 1px solid #e0b000; padding: .4em .8em; }}
#gallery {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure.cls {{ margin: 0; padding: 3px; border: 5px solid; text-align: center; font-size: 12px; }}
figure.good {{ border-color: {GOOD_COLOUR}; }}
figure.bad {{ border-color: {BAD_COLOUR}; }}
figure.cls img {{ display: block; margin: 0 auto; width: 96px; height: 96px; image-rendering: pixelated; }}
.legend span {{ display: inline-block; width: 1em; height: 1em; vertical-align: middle; }}
"""


def render_report(rows: Sequence[ClassRow], threshold: float, title: str = "biocnn select",
                  notes: Sequence[str] = (), summary: dict[str, object] | None = None) -> str:
    """The report page: summary, warnings, histogram, and every class sorted by score
    (highest first) with a coloured frame (kept / rejected), its score and particle count."""
    esc = html.escape
    ordered = sorted(rows, key=lambda r: (-r.score, r.index))
    kept = sum(r.good for r in rows)
    info = {"classes": len(rows), "kept": kept, "rejected": len(rows) - kept,
            "threshold": threshold, **(summary or {})}
    cells = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in info.items())
    figures = []
    for r in ordered:
        data = base64.b64encode(png_bytes(r.image)).decode("ascii")
        count = "" if r.count is None else f" · {r.count:,} ptcl"
        note = f"<br><em>{esc(r.note)}</em>" if r.note else ""
        figures.append(
            f'<figure class="cls {"good" if r.good else "bad"}" data-score="{r.score:.4f}" '
            f'title="{esc(r.name)}"><img alt="class {r.index}" src="data:image/png;base64,{data}">'
            f'<figcaption>#{r.index} · <b>{r.score:.3f}</b>{count}{note}</figcaption></figure>')
    warn = "".join(f'<p class="warning">{esc(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(title)}</h1>
{warn}
<table class="summary">{cells}</table>
<h2>Score histogram</h2>
{histogram_svg([r.score for r in rows], threshold)}
<h2>Classes by P(good)</h2>
<p class="legend"><span style="background:{GOOD_COLOUR}"></span> kept (P(good) &ge; {threshold:g})
&nbsp; <span style="background:{BAD_COLOUR}"></span> rejected</p>
<div id="gallery">
{chr(10).join(figures)}
</div>
</body></html>
"""


def write_html_report(path: str | os.PathLike, rows: Sequence[ClassRow], threshold: float,
                      title: str = "biocnn select", notes: Sequence[str] = (),
                      summary: dict[str, object] | None = None) -> Path:
    """Atomically write :func:`render_report` to ``path`` (UTF-8, whatever the locale)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(render_report(rows, threshold, title, notes, summary).encode("utf-8"))
    return Path(path)
