"""The fused gather/check/normalise kernel against a float64 numpy reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn import jit
from biocnn.data.kernels import normalize_rows
from biocnn.data.preprocess import background_weight


def reference(images: np.ndarray, weight: np.ndarray, invert: bool = False) -> np.ndarray:
    """Background normalisation in float64, image by image (the definition)."""
    out = []
    for x in images.astype(np.float64):
        bg = x[weight > 0]
        std = bg.std()
        if not std > 1e-3 * x.std():
            std = x.std()
        y = (x - bg.mean()) / std if std > 0 else np.zeros_like(x)
        out.append(-y if invert else y)
    return np.asarray(out)


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(8, 40),
    n=st.integers(1, 6),
    offset=st.sampled_from([0.0, 3.0, -250.0, 1e4]),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
    seed=st.integers(0, 1000),
    threads=st.sampled_from([1, 2]),
)
def test_matches_float64_reference(
    size: int, n: int, offset: float, scale: float, seed: int, threads: int
) -> None:
    rng = np.random.default_rng(seed)
    src = (offset + scale * rng.standard_normal((n + 3, size, size))).astype(np.float32)
    rows = rng.integers(0, n + 3, n)  # any order, repeats allowed
    dest = rng.permutation(n)
    weight = background_weight(size, 0.4 * size)
    out = np.full((n, size, size), np.nan, np.float32)
    bad = normalize_rows(src, rows, out, weight, dest=dest, threads=threads)
    assert not bad.any()
    # float32 output within a couple of ulps of the float64 definition, offsets of 1e4 included
    np.testing.assert_allclose(out[dest], reference(src[rows], weight), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float64])
def test_integer_and_double_sources(dtype: type) -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 100, (4, 16, 16)).astype(dtype)
    weight = background_weight(16, 6.0)
    out = np.empty((4, 16, 16), np.float32)
    assert not normalize_rows(src, np.arange(4), out, weight).any()
    np.testing.assert_allclose(out, reference(src, weight), atol=1e-4, rtol=1e-4)


def test_flat_background_constant_image_invert_and_copy() -> None:
    src = np.zeros((3, 32, 32), np.float32)
    src[0, 12:20, 12:20] = 4.0  # noiseless projection: the background is exactly flat
    src[1] = 0.1  # constant, not exactly representable
    src[2] = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    weight = background_weight(32, 10.0)
    out = np.empty_like(src)
    normalize_rows(src, np.arange(3), out, weight, invert=True)
    np.testing.assert_allclose(out[0].std(), 1.0, rtol=1e-5)  # whole-image std used
    assert (out[1] == 0).all()
    np.testing.assert_allclose(out, reference(src, weight, invert=True), atol=1e-4, rtol=1e-4)
    normalize_rows(src, np.arange(3), out, weight, normalize=False, invert=True)
    np.testing.assert_array_equal(out, -src)


def test_non_finite_images_are_flagged_and_others_written() -> None:
    rng = np.random.default_rng(1)
    src = rng.standard_normal((5, 16, 16)).astype(np.float32)
    src[1, 3, 4] = np.nan
    src[3, 0, 0] = np.inf
    out = np.zeros_like(src)
    weight = background_weight(16, 6.0)
    for normalize in (True, False):
        bad = normalize_rows(src, np.arange(5), out, weight, normalize=normalize)
        assert bad.tolist() == [False, True, False, True, False]
        assert np.isfinite(out[[0, 2, 4]]).all()


def test_in_place_and_argument_checks() -> None:
    src = np.random.default_rng(2).standard_normal((3, 16, 16)).astype(np.float32) * 5 + 2
    expected = reference(src, background_weight(16, 6.0))
    normalize_rows(src, np.arange(3), src, background_weight(16, 6.0))
    np.testing.assert_allclose(src, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        normalize_rows(src, np.arange(3), np.empty((3, 8, 8), np.float32), background_weight(16, 6.0))
    with pytest.raises(ValueError, match="float32"):
        normalize_rows(src, np.arange(3), np.empty((3, 16, 16)), background_weight(16, 6.0))
    with pytest.raises(ValueError, match="C-contiguous"):
        normalize_rows(np.ones((3, 16, 32), np.float32)[:, :, ::2], np.arange(3), src,
                       background_weight(16, 6.0))
    with pytest.raises(ValueError, match="byte order"):
        normalize_rows(src.astype(">f4"), np.arange(3), src, background_weight(16, 6.0))
    out = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(IndexError, match="out of range"):  # a source row past the end
        normalize_rows(src, np.array([0, 3]), out, background_weight(16, 6.0))
    with pytest.raises(IndexError, match="out of range"):  # an output row past the end
        normalize_rows(src, np.array([0, 1]), out, background_weight(16, 6.0), dest=np.array([0, 2]))
    with pytest.raises(IndexError, match="out of range"):  # negative rows are not wrapped
        normalize_rows(src, np.array([-1]), out, background_weight(16, 6.0))


def _large_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enough pixels (10 x 256²) for the kernel to split the batch over two threads."""
    rng = np.random.default_rng(3)
    src = (7 + 2 * rng.standard_normal((12, 256, 256))).astype(np.float32)
    src[4, 10, 10] = np.nan
    return src, rng.permutation(12)[:10], background_weight(256, 100.0)


@pytest.mark.parametrize("parallel", ["1", "0"])
def test_thread_pool_paths_agree_with_one_thread(monkeypatch: pytest.MonkeyPatch,
                                                 parallel: str) -> None:
    """numba's thread pool (default) and the Python-thread fallback write what one thread
    writes (to float32 rounding: the pool's compiled loop may sum in another order), flag
    the same images and check rows the same way."""
    monkeypatch.setenv("BIOCNN_JIT_PARALLEL", parallel)
    src, rows, weight = _large_batch()
    one, two = (np.zeros((10, 256, 256), np.float32) for _ in range(2))
    bad_one = normalize_rows(src, rows, one, weight, threads=1)
    bad_two = normalize_rows(src, rows, two, weight, threads=2)
    assert bad_two.tolist() == bad_one.tolist() == (rows == 4).tolist()
    if parallel == "1" and numba.config.NUMBA_NUM_THREADS > 1:
        assert jit._PARALLEL_PID == os.getpid()  # the pool ran here
    np.testing.assert_allclose(two, one, atol=1e-6, rtol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        normalize_rows(src, np.r_[rows[:9], 12], two, weight, threads=2)


_FORK_SCRIPT = """
import os, numpy as np
from biocnn import jit
from biocnn.data.kernels import normalize_rows
from biocnn.data.preprocess import background_weight
src = np.random.default_rng(0).standard_normal((10, 256, 256)).astype(np.float32)
out = np.empty_like(src)
w = background_weight(256, 100.0)
normalize_rows(src, np.arange(10), out, w, threads=2)  # starts the thread pool
expected = out.copy()
pid = os.fork()
if pid == 0:  # GNU OpenMP would abort a parallel region here; the kernel must fall back
    out[:] = 0
    normalize_rows(src, np.arange(10), out, w, threads=2)
    os._exit(0 if np.allclose(out, expected, atol=1e-6, rtol=1e-6) else 3)
print(os.waitpid(pid, 0)[1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_after_parallel_reading_still_reads() -> None:
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stdout + done.stderr


def _threads_seen(n: int) -> int:
    """A stand-in kernel: numba's thread count while it runs (``n`` is its share count)."""
    return numba.get_num_threads()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_run_parallel_limits_and_restores_numba_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jit, "_PARALLEL_SAFE", True)
    monkeypatch.setattr(jit, "_PARALLEL_PID", None)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
        assert jit.run_parallel(_threads_seen, 2) == 2
        assert jit.run_parallel(_threads_seen, 1) is None  # one share: nothing to split
        numba.set_num_threads(1)
        assert jit.run_parallel(_threads_seen, 2) == 1  # never raises the count
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
    assert jit._PARALLEL_PID == os.getpid()


def test_run_parallel_lowers_a_larger_pool_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine with more numba threads than shares, the region runs on as many threads
    as shares, and the count is restored afterwards (even when the kernel fails)."""
    counts = [8]
    monkeypatch.setattr(jit, "_PARALLEL_SAFE", True)
    monkeypatch.setattr(jit, "_PARALLEL_PID", None)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 8)
    monkeypatch.setattr(numba, "get_num_threads", lambda: counts[-1])
    monkeypatch.setattr(numba, "set_num_threads", counts.append)
    assert jit.run_parallel(lambda n: (n, counts[-1]), 2) == (2, 2)
    assert counts == [8, 2, 8]

    def fails(n: int) -> None:
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        jit.run_parallel(fails, 3)
    assert counts == [8, 2, 8, 3, 8]


def test_workqueue_layer_is_used_once_then_avoided(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba's ``workqueue`` layer is not thread-safe: after one run on it, fall back."""
    monkeypatch.setattr(jit, "_PARALLEL_SAFE", True)
    monkeypatch.setattr(jit, "_PARALLEL_PID", None)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert jit.run_parallel(lambda n: n, 2) == 2
    assert jit._PARALLEL_SAFE is False and jit.run_parallel(lambda n: n, 2) is None


def test_no_threading_layer_falls_back_to_python_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba can load no threading layer, reading still works (and stops trying)."""
    from biocnn.data import kernels

    def unavailable(*args: object) -> int:
        raise ValueError("No threading layer could be loaded.")

    monkeypatch.setattr(kernels, "_kernel_parallel", unavailable)
    monkeypatch.setattr(jit, "_PARALLEL_SAFE", True)
    monkeypatch.setattr(jit, "_PARALLEL_PID", None)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    src, rows, weight = _large_batch()
    out, one = (np.zeros((10, 256, 256), np.float32) for _ in range(2))
    assert normalize_rows(src, rows, out, weight, threads=2).tolist() == (rows == 4).tolist()
    assert jit._PARALLEL_SAFE is False and jit.run_parallel(lambda n: n, 2) is None
    normalize_rows(src, rows, one, weight, threads=1)
    np.testing.assert_array_equal(out, one)  # the same compiled loop as one thread
