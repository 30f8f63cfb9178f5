"""Fused CPU kernel of the data path: gather images, check them and normalise, in one pass.

Reading a stack through the dataset used to cost ~15 numpy/torch passes per image (copy,
NaN check, masked mean, masked variance, whole-image variance, shift, scale), each
allocating a batch-sized temporary. :func:`normalize_rows` does it in two sweeps over
each image while it sits in the CPU cache -- statistics, then the scaled copy -- reading
straight from the (memory-mapped) source, so the cost stays close to that of a plain
copy. It is compiled with numba (cached on disk after the first call) and runs on
several threads for large batches (numba's thread pool where safe, see :mod:`biocnn.jit`).

Statistics are accumulated in float32 over blocks of 1024 pixels and in float64 across
blocks, around a shift (the mean of the first row, a background pixel level), so large
offsets (e.g. raw counts around 1e4) do not cancel catastrophically. The output is
computed in float32 as ``(x - c_hi) * s + d``, where ``c_hi`` is the centre rounded to
float32 and ``d = -(c - c_hi) * s`` restores the part rounding dropped: ``x - c_hi`` is
exact for pixels near the centre (Sterbenz), so the result is as accurate as the float64
formula to a couple of float32 ulps, even for offsets of 1e4 and a std of 1e-2; it has
no chain of one operation that fast-math reassociation could regroup. While one image's
statistics are summed, the next image is prefetched into the cache, so its memory-bound
read overlaps this image's arithmetic.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from biocnn.jit import FASTMATH, prefetch, run_parallel, run_split

__all__ = ["normalize_rows"]

#: Below this many pixels per batch one thread is faster than handing work to others.
_MIN_PIXELS_PER_THREAD = 1 << 18
_FLAT_BACKGROUND = 1e-3
#: Pixels summed in float32 before adding to the float64 totals.
_BLOCK = 1024
#: Per-image flags the kernel sets.
_NONFINITE, _OUT_OF_RANGE = 1, 2


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def _kernel(src, rows, dest, weight, width, normalize, sign, out, bad):  # pragma: no cover
    """``src (N, P)``, ``weight (P,)``, ``out (M, P)``: flattened images of row length
    ``width``; see :func:`normalize_rows`."""
    n_all = src.shape[1]
    n_bg = 0.0
    for p in range(n_all):
        n_bg += weight[p]
    flagged = 0
    line = max(1, 64 // src.itemsize)  # elements per 64-byte cache line
    for b in range(rows.shape[0]):
        if not (0 <= rows[b] < src.shape[0] and 0 <= dest[b] < out.shape[0]):
            bad[b] = _OUT_OF_RANGE
            flagged += 1
            continue
        x = src[rows[b]]
        after = rows[b + 1] if b + 1 < rows.shape[0] else rows[b]
        upcoming = src[after if 0 <= after < src.shape[0] else rows[b]]
        o = out[dest[b]]
        k = 0.0
        for p in range(width):
            k += x[p]
        shift = np.float32(k / width)
        s_all = 0.0
        q_all = 0.0
        s_bg = 0.0
        q_bg = 0.0
        for start in range(0, n_all, _BLOCK):
            for p in range(start, min(start + _BLOCK, n_all), line):
                prefetch(upcoming, p)
            xs = x[start : start + _BLOCK]
            ws = weight[start : start + _BLOCK]
            sa = np.float32(0.0)
            qa = np.float32(0.0)
            sb = np.float32(0.0)
            qb = np.float32(0.0)
            for p in range(xs.shape[0]):
                v = np.float32(xs[p]) - shift
                wv = ws[p] * v
                sa += v
                qa += v * v
                sb += wv
                qb += wv * v
            s_all += sa
            q_all += qa
            s_bg += sb
            q_bg += qb
        if not (math.isfinite(s_all) and math.isfinite(q_all)):
            bad[b] = _NONFINITE
            flagged += 1
            continue
        if normalize:
            m_all = s_all / n_all
            m_bg = s_bg / n_bg
            std_all = math.sqrt(max(q_all / n_all - m_all * m_all, 0.0))
            std = math.sqrt(max(q_bg / n_bg - m_bg * m_bg, 0.0))
            if not std > _FLAT_BACKGROUND * std_all:
                std = std_all
            scale = sign / std if std > 0 else 0.0  # a constant image: x - centre == 0
            centre = m_bg + shift
        else:
            scale = sign
            centre = 0.0
        c_hi = np.float32(centre)
        s32 = np.float32(scale)
        d = np.float32(-(centre - np.float64(c_hi)) * scale)
        for p in range(n_all):
            o[p] = (np.float32(x[p]) - c_hi) * s32 + d
    return flagged


@numba.njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def _kernel_parallel(src, rows, dest, weight, width, normalize, sign, out, bad, parts):  # pragma: no cover
    """:func:`_kernel` over ``parts`` contiguous shares of ``rows`` on numba's threads."""
    n = rows.shape[0]
    flagged = np.zeros(parts, dtype=np.int64)
    for i in numba.prange(parts):
        a, b = n * i // parts, n * (i + 1) // parts
        flagged[i] = _kernel(src, rows[a:b], dest[a:b], weight, width, normalize, sign, out,
                             bad[a:b])
    return flagged.sum()


def normalize_rows(
    src: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray,
    weight: np.ndarray,
    *,
    dest: np.ndarray | None = None,
    normalize: bool = True,
    invert: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """Copy images ``src[rows]`` into ``out[dest]``, normalised to mean 0 / std 1 over
    the pixels where ``weight`` is 1.

    Parameters
    ----------
    src
        ``(N, H, W)`` C-contiguous real pixels (any native numeric dtype; a memory map is
        read in place).
    rows
        ``(B,)`` images of ``src`` to read (any order, repeats allowed).
    out
        ``(M, H, W)`` float32 C-contiguous output; may be ``src`` itself (in place) when
        ``rows == dest``.
    weight
        ``(H, W)`` float32, 1 on the background pixels and 0 elsewhere.
    dest
        ``(B,)`` rows of ``out`` to write (default ``arange(B)``).
    normalize
        False: only copy (and check).
    invert
        Multiply the result by -1.
    threads
        Threads to split the batch over (default ``torch.get_num_threads()``).

    Returns
    -------
    np.ndarray
        ``(B,)`` bool, True for images with a NaN or Inf pixel (or whose statistics
        overflow float64); their ``out`` rows are left unwritten.

    Raises
    ------
    IndexError
        A row outside ``src`` or ``out`` (checked inside the kernel, not in extra passes).

    Notes
    -----
    Background mean/std as :func:`biocnn.data.preprocess.normalize_background` defines
    them: when the background std is below 1e-3 of the whole image's std (a noiseless
    projection), the whole image's std is used; a constant image becomes zeros.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    dest = np.arange(len(rows), dtype=np.int64) if dest is None else np.ascontiguousarray(
        dest, dtype=np.int64)
    if src.ndim != 3 or out.ndim != 3 or not src.shape[1:] == out.shape[1:] == weight.shape:
        raise ValueError(f"shapes do not match: src {src.shape}, out {out.shape}, "
                         f"weight {weight.shape}")
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous float32")
    if not src.dtype.isnative:
        raise ValueError(f"source byte order {src.dtype.str} is not native; convert it first")
    if not src.flags.c_contiguous:  # reshaping would silently copy (a whole memory map)
        raise ValueError("src must be C-contiguous")
    n, h, w = src.shape
    # plain-ndarray views (a memory map's subclass makes every view slower to create)
    flat_src = src.view(np.ndarray).reshape(n, h * w)  # a view: images are C-contiguous
    flat_out = out.view(np.ndarray).reshape(len(out), h * w)
    flat_weight = np.ascontiguousarray(weight, dtype=np.float32).reshape(h * w)
    flags = np.zeros(len(rows), dtype=np.uint8)
    sign = -1.0 if invert else 1.0
    threads = max(1, threads or torch.get_num_threads())
    parts = min(threads, max(1, len(rows) * h * w // _MIN_PIXELS_PER_THREAD))
    flagged = run_parallel(_kernel_parallel, parts, flat_src, rows, dest, flat_weight, w,
                           normalize, sign, flat_out, flags)
    if flagged is None:
        flagged = sum(run_split(_kernel, len(rows), parts, lambda a, b: (
            flat_src, rows[a:b], dest[a:b], flat_weight, w, normalize, sign, flat_out,
            flags[a:b])))
    if flagged and (flags == _OUT_OF_RANGE).any():
        j = int(np.argmax(flags == _OUT_OF_RANGE))
        raise IndexError(f"row {rows[j]} -> {dest[j]} is out of range ({n} source images, "
                         f"{len(out)} output rows)")
    return flags == _NONFINITE
