"""BatchNorm followed by ReLU as one layer, with fused CPU training kernels.

In training PyTorch's CPU BatchNorm on NCHW tensors makes several passes over the
activation (statistics, then normalisation), ReLU another, and their backwards three more;
at 128 px they were ~15 % of an ``invariant`` training step. :class:`BatchNormReLU2d`
keeps ``nn.BatchNorm2d``'s parameters, buffers and state-dict keys, and on a CPU in
training mode (float32, contiguous, no autocast) runs numba kernels that compute the
statistics in one sweep and write ``relu(batchnorm(x))`` in a second, and do the backward
in two sweeps; everywhere else (evaluation, GPUs, bf16) it is PyTorch's BatchNorm + ReLU.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biocnn.jit import FASTMATH, run_split

__all__ = ["BatchNormReLU2d"]

#: Below this many elements one thread is faster than several.
_MIN_ELEMENTS_PER_THREAD = 1 << 18


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def _forward(x, w, b, eps, c0, c1, out, mean, var, invstd):  # pragma: no cover - jitted
    """``x, out (B, C, P)``; channels ``c0 .. c1 - 1``: batch statistics, then relu(bn(x))."""
    n_b, _, n_p = x.shape
    count = n_b * n_p
    for c in range(c0, c1):
        shift = x[0, c, 0]  # a sample of the channel: keeps the one-sweep variance accurate
        s = 0.0
        q = 0.0
        for n in range(n_b):
            xs = x[n, c]
            sa = np.float32(0.0)
            qa = np.float32(0.0)
            for p in range(n_p):
                v = xs[p] - shift
                sa += v
                qa += v * v
            s += sa
            q += qa
        m = s / count
        v_c = max(q / count - m * m, 0.0)
        mu = m + shift
        inv = 1.0 / math.sqrt(v_c + eps)
        mean[c], var[c], invstd[c] = mu, v_c, inv
        scale = np.float32(w[c] * inv)
        mu32 = np.float32(mu)
        beta = np.float32(b[c])
        for n in range(n_b):
            xs = x[n, c]
            ys = out[n, c]
            for p in range(n_p):
                y = (xs[p] - mu32) * scale + beta
                ys[p] = y if y > 0 else np.float32(0.0)


@numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
def _backward(g, x, y, w, mean, invstd, c0, c1, dx, dw, db):  # pragma: no cover - jitted
    """Gradients of relu(bn(x)) for channels ``c0 .. c1 - 1``; ``g, x, y, dx (B, C, P)``."""
    n_b, _, n_p = x.shape
    count = n_b * n_p
    for c in range(c0, c1):
        mu = np.float32(mean[c])
        sg = 0.0
        sgx = 0.0
        for n in range(n_b):
            gs, xs, ys = g[n, c], x[n, c], y[n, c]
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            for p in range(n_p):
                gp = gs[p] if ys[p] > 0 else np.float32(0.0)
                a1 += gp
                a2 += gp * (xs[p] - mu)
            sg += a1
            sgx += a2
        inv = invstd[c]
        db[c] = sg
        dw[c] = sgx * inv
        k1 = np.float32(w[c] * inv)
        k2 = np.float32(sgx * inv * inv / count)
        mg = np.float32(sg / count)
        for n in range(n_b):
            gs, xs, ys, ds = g[n, c], x[n, c], y[n, c], dx[n, c]
            for p in range(n_p):
                gp = gs[p] if ys[p] > 0 else np.float32(0.0)
                ds[p] = k1 * (gp - mg - (xs[p] - mu) * k2)


def _parts(x: Tensor) -> int:
    return max(1, min(torch.get_num_threads(), x.numel() // _MIN_ELEMENTS_PER_THREAD))


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) with batch statistics: returns ``(out, mean, biased var)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        b, c = x.shape[:2]
        x3 = x.detach().reshape(b, c, -1).numpy()
        out = torch.empty_like(x)
        mean, var, invstd = np.empty(c), np.empty(c), np.empty(c)
        w, bb, o3 = weight.detach().numpy(), bias.detach().numpy(), out.reshape(b, c, -1).numpy()
        run_split(_forward, c, _parts(x),
                  lambda c0, c1: (x3, w, bb, eps, c0, c1, o3, mean, var, invstd))
        mean_t, var_t = torch.from_numpy(mean), torch.from_numpy(var)
        ctx.save_for_backward(x, out, weight, mean_t, torch.from_numpy(invstd))
        ctx.mark_non_differentiable(mean_t, var_t)
        return out, mean_t, var_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor, None]:
        x, out, weight, mean, invstd = ctx.saved_tensors
        b, c = x.shape[:2]
        g = g.contiguous()
        dx = torch.empty_like(x)
        dw, db = np.empty(c), np.empty(c)
        arrays = [t.reshape(b, c, -1).numpy() for t in (g, x, out, dx)]
        w = weight.detach().numpy()
        run_split(_backward, c, _parts(x), lambda c0, c1: (
            arrays[0], arrays[1], arrays[2], w, mean.numpy(), invstd.numpy(), c0, c1,
            arrays[3], dw, db))
        return dx, torch.from_numpy(dw).to(weight.dtype), torch.from_numpy(db).to(weight.dtype), None


class BatchNormReLU2d(nn.BatchNorm2d):
    """``relu(BatchNorm2d(x))``: ``(B, C, H, W)`` → ``(B, C, H, W)``, the parameters,
    buffers and state-dict keys of ``nn.BatchNorm2d``; fused CPU kernels in training."""

    def forward(self, x: Tensor) -> Tensor:
        fused = (
            self.training and self.affine and self.track_running_stats
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and x.shape[0] * x[0, 0].numel() > 1
        )
        if not fused:
            return F.relu(super().forward(x), inplace=True)
        out, mean, var = _BatchNormReLU.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            count = x.numel() // x.shape[1]
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean), alpha=factor)
            self.running_var.mul_(1 - factor).add_(
                var.to(self.running_var) * (count / (count - 1)), alpha=factor)
        return out
