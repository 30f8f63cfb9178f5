"""The self-contained HTML report of ``biocnn select``: PNG encoder, histogram, page, and the
page as headless Chromium renders it (skipped where Debian's ``chromium`` is absent)."""

from __future__ import annotations

import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from biocnn.html_report import ClassRow, histogram_svg, png_bytes, render_report, write_html_report

CHROMIUM = "/usr/bin/chromium"


def _rows(n: int = 12, seed: int = 0) -> list[ClassRow]:
    rng = np.random.default_rng(seed)
    c = np.arange(48) - 24
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    rows = []
    for i in range(n):
        score = float(rng.uniform())
        image = np.exp(-r2 / (2 * (3 + i % 5) ** 2)) + 0.1 * rng.standard_normal((48, 48))
        rows.append(ClassRow(i + 1, f"{i + 1:06d}@run_it025_classes.mrcs", score, score >= 0.5,
                             int(rng.integers(100, 5000)), image))
    return rows


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for the 8-bit grey, filter-0 PNGs :func:`png_bytes` writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            size = (int.from_bytes(body[4:8], "big"), int.from_bytes(body[:4], "big"))
            assert body[8:10] == b"\x08\x00"  # 8-bit greyscale
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(size[0], size[1] + 1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:]


def test_png_round_trip_and_contrast() -> None:
    img = np.zeros((32, 16))
    img[:, 8:] = 1.0
    img[0, 0] = 1e6  # a hot pixel does not flatten the grey levels (1-99 percentile)
    pixels = _decode_png(png_bytes(img, size=64))
    assert pixels.shape == (64, 32)
    assert pixels[10, :15].max() == 0 and pixels[10, 17:].min() == 255


def test_histogram_counts_and_threshold_position() -> None:
    svg = histogram_svg([0.05, 0.05, 0.95], threshold=0.25, bins=10, width=140, height=100)
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 10 and heights[0] == max(heights) and heights[9] == heights[0] / 2
    assert sum(h > 0 for h in heights) == 2
    x = float(re.search(r'id="threshold" x1="([\d.]+)"', svg).group(1))
    assert x == pytest.approx(40 + 0.25 * 90)  # left margin 40, plot width 140 - 50


def test_page_sorted_by_score_self_contained() -> None:
    rows = _rows()
    page = render_report(rows, 0.5, notes=["a warning"])
    scores = [float(s) for s in re.findall(r'data-score="([\d.]+)"', page)]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(rows)
    assert page.count('class="cls good"') == sum(r.good for r in rows)
    assert "a warning" in page
    # nothing loaded from elsewhere: every src is inline data, no link or script tag
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]+)"', page))
    assert not re.search(r"<(script|link)\b|https?://(?!www\.w3\.org/2000/svg)", page)


def _png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    rows = _rows(16)
    report = write_html_report(tmp_path / "report.html", rows, 0.5)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1200"]
    url = report.resolve().as_uri()  # file:// only: the page must work without a server
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], check=True, capture_output=True,
                   timeout=60)
    pixels = _png_pixels(shot)
    assert pixels.std() > 20  # not a blank page
    blue = (np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(-1) < 30).sum()
    orange = (np.abs(pixels - [0xE6, 0x61, 0x00]).sum(-1) < 30).sum()
    assert blue > 500 and orange > 500  # frames and histogram bars of both kinds were painted
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    gallery = re.search(r'<div id="gallery">(.*?)</div>', dom, re.S)
    assert gallery and gallery.group(1).count("<figure") == 16
    assert gallery.group(1).count("<img") == 16
    assert re.search(r'<svg id="histogram"', dom) and 'id="threshold"' in dom
    assert dom.count('class="bar"') == 20
