"""Shared plumbing for biocnn's numba CPU kernels: fast-math flags, a cache-prefetch
intrinsic and two ways to split a kernel's work over threads.

* :func:`run_parallel`: a ``parallel=True`` twin of the kernel runs its shares on
  numba's thread pool. With the OpenMP layer its threads spin briefly between calls, so
  handing over a share costs ~1 µs; used whenever it is safe (see below).
* :func:`run_split`: the ``nogil=True`` kernel runs contiguous shares on Python threads
  (this thread takes the first). Waking a sleeping thread costs 45-110 µs in a VM -- as long
  as reading a dozen images -- so this is the fallback.

GNU OpenMP is not fork-safe (a forked child that starts a parallel region is aborted) and
numba's own ``workqueue`` layer is not thread-safe, so :func:`run_parallel` declines in a
process forked after the pool was started, after the pool turned out to be ``workqueue`` or
failed to load, and when ``BIOCNN_JIT_PARALLEL=0``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["FASTMATH", "prefetch", "run_parallel", "run_split"]

#: Let LLVM vectorise reductions (reassociate) but keep NaN/Inf semantics. numba applies a
#: kernel's flags to everything it calls, so arithmetic must stay accurate when reordered.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
#: The process whose numba thread pool the parallel kernels started (None: not started).
_PARALLEL_PID: int | None = None
#: False once the pool turned out not to be thread-safe (numba's ``workqueue`` layer).
_PARALLEL_SAFE = True


@intrinsic
def prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover  (compiled)
    """``prefetch(array, i)`` inside a numba function: ask the CPU to start loading the cache
    line holding ``array[i]`` (1D array; no bounds check -- a prefetch never faults) into
    its mid-level cache, without waiting for it (LLVM's ``llvm.prefetch``, read)."""
    sig = types.void(array, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read (0), locality 2 (keep in L2 and outer levels), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's worker threads (rebuilt after a fork: a child has none of its parent's)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="biocnn-jit"))
    return _POOL[2]


def run_parallel(kernel: Callable[..., Any], parts: int, *args: Any) -> Any | None:
    """Run ``kernel(*args, n)``, a numba ``parallel=True`` kernel splitting its work into
    ``n = min(parts, numba's threads)`` shares, on numba's pool with at most ``n`` threads
    (a 64-core pool does not wake 64 threads for 2 shares). Returns its result, or None
    where it must not run -- fewer than 2 shares, a process forked after the pool started,
    a pool that is ``workqueue`` (not thread-safe) or does not load, or
    ``BIOCNN_JIT_PARALLEL=0`` -- and the caller falls back to :func:`run_split`."""
    global _PARALLEL_PID, _PARALLEL_SAFE
    n = min(parts, numba.config.NUMBA_NUM_THREADS)
    if (n < 2 or not _PARALLEL_SAFE or _PARALLEL_PID not in (None, os.getpid())
            or os.environ.get("BIOCNN_JIT_PARALLEL") == "0"):
        return None
    try:
        saved = numba.get_num_threads()  # starts the pool: children forked later must not use it
        _PARALLEL_PID = os.getpid()
        if saved > n:
            numba.set_num_threads(n)
        try:
            result = kernel(*args, n)
        finally:
            if saved > n:
                numba.set_num_threads(saved)
    except ValueError as exc:  # numba: "No threading layer could be loaded"
        if "threading layer" not in str(exc):
            raise
        _PARALLEL_SAFE = False
        return None
    _PARALLEL_SAFE = numba.threading_layer() != "workqueue"
    return result


def run_split(
    kernel: Callable[..., Any], n: int, parts: int, args: Callable[[int, int], Sequence[Any]]
) -> list[Any]:
    """Run ``kernel(*args(start, stop))`` over ``parts`` contiguous shares of ``range(n)``.

    ``parts <= 1`` runs it once, here; otherwise the first share runs here and the others
    on this process's worker threads, and the call returns when all are done. Returns the
    kernel's results, share by share (nothing when ``n == 0``).
    """
    if n <= 0:
        return []
    if parts <= 1 or n == 1:
        return [kernel(*args(0, n))]
    parts = min(parts, n)
    bounds = [n * i // parts for i in range(parts + 1)]
    jobs = [_pool(parts - 1).submit(kernel, *args(bounds[i], bounds[i + 1]))
            for i in range(1, parts)]
    return [kernel(*args(bounds[0], bounds[1]))] + [job.result() for job in jobs]
