"""Small composable layers for shift-invariant CNNs.

* :class:`BlurPool2d` — anti-aliased downsampling (Zhang, ICML 2019).
* :class:`APS2d` — adaptive polyphase sampling (Chaman & Dokmanić, CVPR 2021): keep the
  polyphase component of largest norm, which makes stride-2 subsampling exactly
  equivariant (up to a shift) to circular shifts.
* :class:`APSConv2d` — a circular conv and APS in one layer: the same output as
  ``APS2d()(conv(x))``, with the gradient computed for the kept component only
  (:func:`aps_conv2d` is the same for a weight built from other parameters).
* :func:`circular_pad` — circular padding with a cheap backward pass.
* :class:`GlobalPool2d` — global average / max / concatenated pooling.
* :class:`DownConv2d` — a conv followed by a parameter-free downsampling module.
* :class:`ConvBlock` — conv → [downsample →] norm → activation with a chosen padding mode.
* :func:`make_downsample` — one switch for ``maxpool|blurpool|aps|none``.
* :class:`ShiftCanonical` — move each image so that the phase of its lowest spatial
  frequency is fixed: exact invariance to circular shifts, whole *and* sub-pixel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biocnn.augment import fourier_shift

__all__ = [
    "PADDING_MODES",
    "BLOCK_ORDERS",
    "DOWNSAMPLE_MODES",
    "POOL_MODES",
    "BlurPool2d",
    "APS2d",
    "APSConv2d",
    "DownConv2d",
    "aps_conv2d",
    "CircularConv2d",
    "circular_pad",
    "MaxPoolStride1",
    "GlobalPool2d",
    "ConvBlock",
    "make_downsample",
    "ShiftCanonical",
    "circular_centroid",
    "centroid_phases",
    "class_activation_map",
]

PADDING_MODES = ("zeros", "circular", "reflect")
#: Where a stage's stride-2 downsampling sits in its last block: right after the conv
#: (``conv → down → norm → act``) or after the activation (``conv → norm → act → down``).
BLOCK_ORDERS = ("conv_down_norm", "conv_norm_down")
DOWNSAMPLE_MODES = ("maxpool", "blurpool", "aps", "none")
POOL_MODES = ("avg", "max", "avgmax")


class _CircularPad(torch.autograd.Function):
    """Circular padding whose backward folds the border gradients back in place.

    PyTorch builds circular padding from slices and concatenations, whose backward
    allocates and zero-fills a full-size gradient per piece (~5x the cost of this one).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
        ctx.pad = pad
        return _circular_pad(x, pad).detach()  # channels-last: not a view (in-place ops work)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        left, right, top, bottom = ctx.pad
        h, w = g.shape[-2] - top - bottom, g.shape[-1] - left - right
        rows, cols = slice(top, top + h), slice(left, left + w)
        gx = g[..., rows, cols].clone()
        # (border of g, the part of x it copies): edges first, then corners
        for src_r, dst_r, n_r in ((slice(0, top), slice(h - top, h), top),
                                  (rows, slice(0, h), 1),
                                  (slice(top + h, top + h + bottom), slice(0, bottom), bottom)):
            for src_c, dst_c, n_c in ((slice(0, left), slice(w - left, w), left),
                                      (cols, slice(0, w), 1),
                                      (slice(left + w, left + w + right), slice(0, right), right)):
                if n_r and n_c and not (src_r == rows and src_c == cols):
                    gx[..., dst_r, dst_c] += g[..., src_r, src_c]
        return gx, None


def circular_pad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Pad ``(B, C, H, W)`` circularly by ``(left, right, top, bottom)`` (each ``<= W, H``),
    keeping a channels-last input channels-last."""
    if x.requires_grad and torch.is_grad_enabled():
        return _CircularPad.apply(x, pad)
    return _circular_pad(x, pad)


def _channels_last(x: Tensor) -> bool:
    """``x (B, C, H, W)`` is laid out channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if _channels_last(x) else torch.contiguous_format


def _circular_pad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    if not _channels_last(x):
        return F.pad(x, pad, mode="circular")
    # F.pad returns NCHW, which every following conv and pool converts back (max-pool,
    # norm and ReLU are much slower on NCHW); padding the (B, 1, H, W, C) view keeps it
    nhwc = x.permute(0, 2, 3, 1).unsqueeze(1)
    return F.pad(nhwc, (0, 0, *pad), mode="circular").squeeze(1).permute(0, 3, 1, 2)


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    """Pad ``(B, C, H, W)`` by ``(left, right, top, bottom)`` in a padding mode of this module."""
    if not any(pad):
        return x
    if mode == "circular":
        return circular_pad(x, pad)
    return F.pad(x, pad, mode="constant" if mode == "zeros" else mode)


def _binomial_kernel(size: int) -> Tensor:
    """Normalised 2D binomial filter ``(size, size)``: [1, 1], [1, 2, 1], [1, 3, 3, 1], ..."""
    row = torch.tensor([1.0])
    for _ in range(size - 1):
        row = torch.cat([row, torch.zeros(1)]) + torch.cat([torch.zeros(1), row])
    k = row[:, None] * row[None, :]
    return k / k.sum()


class BlurPool2d(nn.Module):
    """Low-pass filter with a binomial kernel, then subsample by ``stride``.

    Parameters
    ----------
    channels
        Number of channels ``C`` (the filter is depthwise).
    filt_size
        Binomial filter size (1 = no blur).
    stride
        Subsampling factor (1 = blur only).
    padding
        ``zeros|circular|reflect``; ``circular`` keeps circular-shift equivariance.

    Shapes: ``(B, C, H, W)`` → ``(B, C, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, channels: int, filt_size: int = 3, stride: int = 2, padding: str = "circular"
    ) -> None:
        super().__init__()
        self.channels, self.stride, self.padding = channels, stride, padding
        self.filt_size = filt_size
        lo = (filt_size - 1) // 2
        self.pad = (lo, filt_size - 1 - lo, lo, filt_size - 1 - lo)
        kernel = _binomial_kernel(filt_size)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.filt_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        x = _pad(x, self.pad, self.padding)
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)


class APS2d(nn.Module):
    """Adaptive polyphase sampling with stride 2 (Chaman & Dokmanić 2021).

    The input is split into its four polyphase components ``x[..., i::2, j::2]``; for each
    sample the component with the largest L2 norm is kept. A circular shift of the input
    permutes the components (and shifts them by at most one pixel), so the selected
    component moves with the input: the layer is exactly equivariant to circular shifts,
    and a global pool after it is exactly invariant.

    With ``max_filter`` the components are those of the input's dense 2x2 max filter
    (max-pool semantics, still exact); the dense filter only chooses phases by norm, and
    the kept component is a stride-2 max-pool of the input's window at its phase (with
    gradients, or given phases; the dense filter's stride-1 pooling is slow on CPUs).
    ``max_filter`` excludes ``filt_size > 1``.

    Maps with an odd height or width cannot be split evenly; they pass through unchanged
    (no downsampling; only the max filter), which keeps the exactness for every input size.

    Shapes: ``(B, C, H, W)`` → ``(B, C, H / 2, W / 2)`` for even ``H, W``.
    """

    def __init__(self, channels: int = 0, filt_size: int = 1, padding: str = "circular",
                 max_filter: bool = False) -> None:
        super().__init__()
        if max_filter and filt_size > 1:
            raise ValueError("APS2d takes max_filter or filt_size > 1, not both")
        self.blur = (
            BlurPool2d(channels, filt_size, stride=1, padding=padding) if filt_size > 1 else None
        )
        self.max_filter = MaxPoolStride1(padding) if max_filter else None

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        """``phase (B,)``, ``2 * i + j`` for component ``(i, j)``: keep that component
        instead of the one of largest norm (see :func:`centroid_phases`)."""
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            return x if self.max_filter is None else self.max_filter(x)
        if self.max_filter is not None:
            return self._max_forward(x, phase)
        if self.blur is not None:
            x = self.blur(x)
        # a view (B, C, H/2, 2, W/2, 2): polyphase component (i, j) is [:, :, :, i, :, j]
        comps = x.view(b, c, h // 2, 2, w // 2, 2)
        if phase is None or bool((phase < 0).any()):
            with torch.no_grad():
                phase = _resolve(phase, _component_norms(comps).argmax(dim=1))
        return _pick_component(comps, phase)

    def _max_forward(self, x: Tensor, phase: Tensor | None) -> Tensor:
        """Even ``H, W``: the max-filtered component at ``phase`` or of largest norm."""
        h, w = x.shape[-2:]
        xp = _pad(x, (0, 1, 0, 1), self.max_filter.padding)
        grad = torch.is_grad_enabled() and x.requires_grad
        if phase is None and not grad:  # phases and their components in one pass
            return _max_components(xp, h, w)[1]
        if phase is None:
            with torch.no_grad():
                phase = _max_components(xp, h, w, keep=False)[0]
        elif bool((phase < 0).any()):  # ambiguous centroids: the largest norm, for them only
            with torch.no_grad():
                ambiguous = (phase < 0).nonzero().flatten()
                by_norm = _max_components(xp[ambiguous], h, w, keep=False)[0]
                phase = phase.index_put((ambiguous,), by_norm.to(phase.dtype))
        if grad:
            return F.max_pool2d(_Windows.apply(xp, phase, h, w), 2)
        return F.max_pool2d(_crop_windows(xp, phase, h, w, xp.device.type == "cpu"), 2)


class _Windows(torch.autograd.Function):
    """``(B, C, h, w)``: each sample's window of ``xp`` at its phase (:func:`_crop_windows`)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, phase: Tensor, h: int, w: int) -> Tensor:
        ctx.grouped, ctx.shape = xp.device.type == "cpu", xp.shape
        ctx.save_for_backward(phase)
        return _crop_windows(xp, phase, h, w, ctx.grouped)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        (phase,) = ctx.saved_tensors
        return _uncrop_windows(g, phase, ctx.shape, ctx.grouped), None, None, None


#: Batch slice size (bytes of full-size maps) for inference and APS norms without gradients.
_SLICE_BYTES = 8 << 20


def _resolve(phase: Tensor | None, by_norm: Tensor) -> Tensor:
    """``phase (B,)`` where given and ``>= 0``, else ``by_norm (B,)``."""
    return by_norm if phase is None else torch.where(phase < 0, by_norm, phase)


def _pick_component(comps: Tensor, phase: Tensor) -> Tensor:
    """``(B, C, H/2, W/2)``: per sample, polyphase component ``phase`` of
    ``comps (B, C, H/2, 2, W/2, 2)``."""
    rows = torch.arange(len(comps), device=comps.device)
    return comps[rows, :, :, phase // 2, :, phase % 2]


def _component_norms(comps: Tensor) -> Tensor:
    """``(B, 4)`` float32 squared L2 norms of the polyphase components of ``comps (B, C,
    H/2, 2, W/2, 2)``, a view of a contiguous ``(B, C, H, W)`` map.

    Summed over the contiguous ``C H/2`` row pairs first (one streaming reduction), then
    over the column phases: 2-4x faster than reducing the 6-d view over dims (1, 2, 4).
    """
    b, c, h2, _, w2, _ = comps.shape
    rows = comps.reshape(b, c * h2, 2, 2 * w2).float().square().sum(dim=1)  # (B, 2, W)
    return rows.view(b, 2, w2, 2).sum(dim=2).reshape(b, 4)


def _max_components(xp: Tensor, h: int, w: int, keep: bool = True) -> tuple[Tensor, Tensor | None]:
    """Phases ``(B,)`` of largest norm and, with ``keep``, kept components ``(B, C, h / 2,
    w / 2)`` of the dense 2x2 max filter of ``xp (B, C, h + 1, w + 1)``, padded right and
    bottom by one; a cache-sized slice of the batch at a time."""
    def comps(part: slice) -> Tensor:
        rows = torch.maximum(xp[part, :, :-1, :], xp[part, :, 1:, :])
        return torch.maximum(rows[..., :-1], rows[..., 1:])

    return _sliced_pick(comps, len(xp), xp.shape[1] * h * w * xp.element_size(), None, keep)


def _sliced_pick(comps_of: Callable[[slice], Tensor], n: int, sample_bytes: int,
                 phase: Tensor | None, keep: bool) -> tuple[Tensor, Tensor | None]:
    """Phases ``(n,)`` and, with ``keep``, kept components of the maps ``comps_of(part)``
    ``(b, C, H, W)`` of ``n`` samples, made and reduced ``_SLICE_BYTES`` at a time (the
    maps of the whole batch are never held). ``phase`` entries ``>= 0`` are kept as given."""
    step = max(1, _SLICE_BYTES // sample_bytes)
    phases: Tensor | None = None if phase is None else phase.clone()
    out: Tensor | None = None
    for s in range(0, n, step):
        maps = comps_of(slice(s, s + step))
        b, c, h, w = maps.shape
        comps = maps.view(b, c, h // 2, 2, w // 2, 2)
        if phases is None:
            phases = torch.empty(n, dtype=torch.long, device=maps.device)
        kept = phases[s : s + step]
        if phase is None:
            torch.argmax(_component_norms(comps), dim=1, out=kept)
        elif bool((kept < 0).any()):  # ambiguous: the largest norm
            kept.copy_(_resolve(kept, _component_norms(comps).argmax(dim=1)))
        if keep:
            if out is None:  # dtype (autocast) and layout of the maps
                out = torch.empty((n, c, h // 2, w // 2), dtype=maps.dtype, device=maps.device,
                                  memory_format=_layout(maps))
            out[s : s + step] = _pick_component(comps, kept)
    assert phases is not None  # at least one sample
    return phases, out


def _phase_groups(phase: Tensor) -> list[tuple[int, Tensor]]:
    """``(phase, indices)`` of the samples at each phase present (a host sync); every
    sample must have one of the four (``-1`` is resolved before)."""
    groups = [(q, (phase == q).nonzero().flatten()) for q in range(4)]
    if sum(len(sel) for _, sel in groups) != len(phase):  # else uninitialised rows would pass
        raise ValueError("APS phases must be in 0..3")
    return [(q, sel) for q, sel in groups if len(sel)]


def _crop_windows(xp: Tensor, phase: Tensor, h: int, w: int, grouped: bool) -> Tensor:
    """``(B, C, h, w)``: per sample, the window of ``xp (B, C, H_p, W_p)`` at its phase."""
    if grouped:  # one copy per phase group: cheapest on a CPU
        out = torch.empty((len(xp), xp.shape[1], h, w), dtype=xp.dtype, device=xp.device,
                          memory_format=_layout(xp))
        for q, sel in _phase_groups(phase):
            out[sel] = xp[sel, :, q // 2 : q // 2 + h, q % 2 : q % 2 + w]
        return out
    b, c = xp.shape[:2]  # one gather kernel, no host-device sync: for GPUs
    sb, sc, sh, sw = xp.stride()
    windows = xp.as_strided((b, 2, 2, c, h, w), (sb, sh, sw, sc, sh, sw))
    return windows[torch.arange(b, device=xp.device), phase // 2, phase % 2]


def _uncrop_windows(g: Tensor, phase: Tensor, shape: torch.Size, grouped: bool) -> Tensor:
    """Adjoint of :func:`_crop_windows`: ``g (B, C, h, w)`` placed into zeros of ``shape``."""
    h, w = g.shape[-2:]
    grad = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=_layout(g))
    if grouped and tuple(shape[-2:]) == (h + 1, w + 1):
        # the copies below overwrite all but row h - h i and column w - w j of a window at
        # (i, j): zero only the edges
        for edge in (grad[:, :, 0], grad[:, :, h], grad[..., 0], grad[..., w]):
            edge.zero_()
    else:
        grad.zero_()
    if grouped:  # one copy per phase group
        for q, sel in _phase_groups(phase):
            grad[:, :, q // 2 : q // 2 + h, q % 2 : q % 2 + w].index_copy_(0, sel, g.index_select(0, sel))
        return grad
    for q in range(4):  # masked adds: no host-device sync
        i, j = divmod(q, 2)
        grad[:, :, i : i + h, j : j + w] += g * (phase == q).view(-1, 1, 1, 1).to(g.dtype)
    return grad


#: ``select(xp, H, W) -> (phase (B,), component (B, C_out, H/2, W/2) or None)``.
_Selector = Callable[[Tensor, int, int], tuple[Tensor, "Tensor | None"]]


class _PhaseConv(torch.autograd.Function):
    """Stride-2 conv of each sample's window at its phase: the kept APS component.

    ``xp (B, C, H + k - 1, W + k - 1)`` is the padded input of an ``H x W`` map;
    ``select`` (run without gradients) picks each sample's phase and may return the
    component already computed, else it is computed here from the windows. The backward
    pass is that of the stride-2 conv of the windows. Under autocast the conv runs in the
    autocast dtype and gradients return in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx: Any, xp: Tensor, weight: Tensor, bias: Tensor | None, select: _Selector,
                h: int, w: int) -> Tensor:
        phase, out = select(xp, h, w)
        device = xp.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else xp.dtype
        grouped = device == "cpu"
        k = weight.shape[-1]
        window = _crop_windows(xp, phase, h + k - 2, w + k - 2, grouped).to(dtype)
        weight_c = weight.to(dtype)
        if out is None:
            out = F.conv2d(window, weight_c, None if bias is None else bias.to(dtype), stride=2)
        ctx.save_for_backward(window, weight_c, phase)
        ctx.xp_shape, ctx.grouped = xp.shape, grouped
        ctx.dtypes = (xp.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        window, weight, phase = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = g.to(window.dtype).contiguous()
        grad_x = grad_w = grad_b = None
        grad_window, grad_weight, _ = torch.ops.aten.convolution_backward(
            g, window, weight, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if ctx.needs_input_grad[0]:
            grad_x = _uncrop_windows(grad_window.to(x_dtype), phase, ctx.xp_shape, ctx.grouped)
        if ctx.needs_input_grad[1]:
            grad_w = grad_weight.to(w_dtype)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = g.float().sum(dim=(0, 2, 3)).to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None


class CircularConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``padding_mode="circular"`` padded by :func:`circular_pad`."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, bias: bool = True
                 ) -> None:
        super().__init__(in_chans, out_chans, kernel_size, padding=kernel_size // 2,
                         padding_mode="circular", bias=bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(circular_pad(x, self._reversed_padding_repeated_twice), weight, bias,
                        self.stride, 0, self.dilation, self.groups)


def _gram_norms(xp: Tensor, weight: Tensor, h: int, w: int) -> Tensor:
    """``(B, 4)`` squared norms of the polyphase components of the bias-free conv of the padded
    input ``xp (B, C, H + k - 1, W + k - 1)`` with ``weight (C_out, C, k, k)``, without forming
    the output: ``trace(W^T W S_q)`` with the second-moment matrix ``S_q = X_q X_q^T`` of the
    ``C k^2``-vector input patches ``X_q`` of phase ``q``."""
    k = weight.shape[-1]
    flat = weight.reshape(len(weight), -1)
    gram = flat.t() @ flat  # (C k^2, C k^2)
    b, c = xp.shape[:2]
    moments = []
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # (B, C k^2, H W / 4) patches of phase (i, j)
        patches = torch.stack([xp[:, :, i + dy : i + dy + h : 2, j + dx : j + dx + w : 2]
                               for dy in range(k) for dx in range(k)], dim=2)
        patches = patches.reshape(b, c * k * k, -1)  # unfold's (c, dy, dx) order
        moments.append(torch.bmm(patches, patches.transpose(1, 2)))
    return (torch.stack(moments, dim=1) * gram).sum(dim=(-1, -2))


def _sliced_components(xp: Tensor, weight: Tensor, bias: Tensor | None, h: int, w: int
                       ) -> tuple[Tensor, Tensor]:
    """Phases ``(B,)`` and kept components ``(B, C_out, H / 2, W / 2)`` of the full conv output,
    computed a cache-sized slice of the batch at a time (the full output of the whole batch is
    never held)."""
    phases, out = _sliced_pick(lambda part: F.conv2d(xp[part], weight, bias), len(xp),
                               len(weight) * h * w * xp.element_size(), None, True)
    assert out is not None
    return phases, out


def aps_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
               phase: Tensor | None = None) -> Tensor:
    """``APS2d()(conv(x), phase)`` for a circular ``k x k`` conv (odd ``k``), computed as in
    :class:`APSConv2d`; ``weight`` may be built from other parameters (autograd flows back).
    A given ``phase (B,)`` needs no norms: only the kept component is ever computed.

    Shapes: ``x (B, C, H, W)``, ``weight (C_out, C, k, k)`` → ``(B, C_out, H / 2, W / 2)`` for
    even ``H, W``; odd sizes give the plain circular conv ``(B, C_out, H, W)``.
    """
    h, w = x.shape[-2:]
    p = weight.shape[-1] // 2
    xp = circular_pad(x, (p, p, p, p))
    if h % 2 or w % 2:
        return F.conv2d(xp, weight, bias)
    c_out = len(weight)
    gram = bias is None and weight[0].numel() < c_out
    if phase is not None and not bool((phase < 0).any()):
        return _PhaseConv.apply(xp, weight, bias, lambda *_: (phase, None), h, w)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if phase is None and not (needs_grad or gram):  # inference: the best components are the output
        return _sliced_components(xp, weight, bias, h, w)[1]

    def select(xp: Tensor, h: int, w: int) -> tuple[Tensor, Tensor | None]:
        if gram:  # phases from the Gram form; the component itself is left to compute
            return _resolve(phase, _gram_norms(xp, weight.detach(), h, w).argmax(dim=1)), None
        by_norm, out = _sliced_components(
            xp, weight.detach(), None if bias is None else bias.detach(), h, w)
        return (by_norm, out) if phase is None else (_resolve(phase, by_norm), None)

    return _PhaseConv.apply(xp, weight, bias, select, h, w)


class APSConv2d(CircularConv2d):
    """A circular ``k x k`` conv followed by adaptive polyphase sampling, in one layer.

    The output is exactly ``APS2d()(conv(x))`` (up to float rounding): of the four
    polyphase components of the conv output, the one with the largest norm is kept per
    sample. Only that component is computed with gradients -- a stride-2 conv on the
    input shifted to its phase -- so the backward pass costs a quarter of the full
    conv's. The component norms come from

    * the input's local Gram form ``sum_p x_p^T (W^T W) x_p`` over the ``C k^2``-vectors
      ``x_p`` of input patches when ``C k^2 < C_out`` (e.g. the first layer on a
      one-channel image: the full-size output is never formed), or
    * a full forward conv without gradients otherwise, run in cache-sized slices of the
      batch, whose kept component is the output (the gradients come from the stride-2 conv
      of the window).

    Odd-sized inputs pass through APS unchanged: the layer is then a plain conv. Its
    parameters and state_dict keys are those of :class:`CircularConv2d`.

    Shapes: ``(B, C, H, W)`` → ``(B, C_out, H / 2, W / 2)`` for even ``H, W``.
    """

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        return aps_conv2d(x, self.weight, self.bias, phase)


class DownConv2d(nn.Conv2d):
    """``k x k`` stride-1 conv (same size) followed by a parameter-free downsampling module.

    The reference composition of a ``conv → down → norm → act`` block: its state_dict keys
    are those of the conv alone, so :class:`APSConv2d` can stand in for it unchanged.

    Shapes: ``(B, C, H, W)`` → the output shape of ``down`` on ``(B, C_out, H, W)``.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, padding: str,
                 down: nn.Module, bias: bool = True) -> None:
        super().__init__(in_chans, out_chans, kernel_size, padding=kernel_size // 2,
                         padding_mode=padding, bias=bias)
        self.down = down

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        """``phase (B,)``: passed to an :class:`APS2d` ``down`` (the component to keep)."""
        def down(y: Tensor, phase: Tensor | None) -> Tensor:
            return self.down(y) if phase is None else self.down(y, phase)

        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, self.weight, self.bias))
        if grad or x.device.type != "cpu":  # slices fit CPU caches; GPUs want whole batches
            return down(self._conv(x), phase)
        # inference: a cache-sized slice of the batch at a time (down works per sample), so
        # the full-size conv output of the whole batch is never allocated
        plane = x.shape[-2] * x.shape[-1] * x.element_size()
        step = max(1, _SLICE_BYTES // (self.out_channels * plane))
        if step >= len(x):
            return down(self._conv(x), phase)
        parts = x.split(step)
        phases = phase.split(step) if phase is not None else [None] * len(parts)
        return torch.cat([down(self._conv(s), q) for s, q in zip(parts, phases, strict=True)])

    def _conv(self, x: Tensor) -> Tensor:
        if self.padding_mode == "circular":
            return F.conv2d(circular_pad(x, self._reversed_padding_repeated_twice), self.weight,
                            self.bias)
        return super().forward(x)


class MaxPoolStride1(nn.Module):
    """2x2 max filter with stride 1 (pad right/bottom by one in the given mode).

    The dense half of "max-pool then subsample": shift-equivariant on its own, with the
    subsampling left to :class:`BlurPool2d` or :class:`APS2d`.
    """

    def __init__(self, padding: str = "circular") -> None:
        super().__init__()
        # max over a zero-padded border would clip negatives; replicate is neutral for max
        self.padding = "circular" if padding == "circular" else "replicate"

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(_pad(x, (0, 1, 0, 1), self.padding), kernel_size=2, stride=1)


class _GlobalPool(torch.autograd.Function):
    """Global average and/or max pooling with a one-pass backward.

    Autograd's ``mean`` + ``amax`` backward materialises the average's gradient, a max
    mask, their product and their sum: four full-size passes. Here the gradient is written
    once (the average's share, broadcast) and the max's share is added at the argmax.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, avg: bool, mx: bool) -> Tensor:
        # positions on dim 1 of a (B, HW, C) view of a channels-last map: its gradient
        # keeps the layout (an NCHW one sends the norm and ReLU backward to slow kernels)
        cl = _channels_last(x)
        flat, dim = (x.permute(0, 2, 3, 1).flatten(1, 2), 1) if cl else (x.flatten(2), 2)
        outs = []
        if avg:
            outs.append(flat.mean(dim=dim))
        if mx:
            peak, where = flat.max(dim=dim)
            outs.append(peak)
            ctx.save_for_backward(where)
        ctx.shape, ctx.avg, ctx.mx, ctx.cl = x.shape, avg, mx, cl
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        b, c, h, w = ctx.shape
        dim = 1 if ctx.cl else 2
        flat_shape = (b, h * w, c) if ctx.cl else (b, c, h * w)

        def unflatten(grad: Tensor) -> Tensor:
            return grad.view(b, h, w, c).permute(0, 3, 1, 2) if ctx.cl else grad.view(b, c, h, w)

        if ctx.avg:
            share = (g[:, :c] / (h * w)).unsqueeze(dim).expand(flat_shape)
            if not ctx.mx:
                return unflatten(share), None, None
            grad = share.contiguous()
        else:
            grad = g.new_zeros(flat_shape)
        (where,) = ctx.saved_tensors
        grad.scatter_add_(dim, where.unsqueeze(dim), g[:, -c:].unsqueeze(dim))
        return unflatten(grad), None, None


class GlobalPool2d(nn.Module):
    """Global pooling over all positions: ``(B, C, H, W)`` → ``(B, C)`` (``2C`` for avgmax).

    The max's gradient goes to one position (the first maximum) per channel.
    """

    def __init__(self, mode: str = "avg") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return _GlobalPool.apply(x, self.mode != "max", self.mode != "avg")

    @property
    def expansion(self) -> int:
        return 2 if self.mode == "avgmax" else 1


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, group or none, got {kind!r}")


def _act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
    if kind not in acts:
        raise ValueError(f"act must be one of {sorted(acts)}, got {kind!r}")
    return acts[kind](inplace=True) if kind in ("relu", "silu") else acts[kind]()


class ConvBlock(nn.Sequential):
    """``conv(k x k, stride 1, same size) → norm → act``: ``(B, Cin, H, W)`` → ``(B, Cout, H, W)``.

    With a ``down`` module (parameter-free, e.g. from :func:`make_downsample`) the block is
    ``conv → down → norm → act``: normalising and activating after the subsampling does
    that work on a quarter of the pixels. The conv is then a :class:`DownConv2d`, or, when
    ``fast`` and ``down`` is a plain :class:`APS2d` after a circular conv, the
    :class:`APSConv2d` that computes the same composition; both have the same state_dict
    keys, so ``fast`` never changes the architecture.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        padding: str = "circular",
        norm: str = "batch",
        act: str = "relu",
        down: nn.Module | None = None,
        fast: bool = True,
    ) -> None:
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        bias = norm == "none"
        conv: nn.Module
        if down is not None and fast and _is_plain_aps(down) and padding == "circular":
            conv = APSConv2d(in_chans, out_chans, kernel_size, bias=bias)
        elif down is not None:
            conv = DownConv2d(in_chans, out_chans, kernel_size, padding, down, bias=bias)
        elif padding == "circular":
            conv = CircularConv2d(in_chans, out_chans, kernel_size, bias=bias)
        else:
            conv = nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2,
                             padding_mode=padding, bias=bias)
        super().__init__(conv, _norm(norm, out_chans), _act(act))

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        """``phase (B,)``: the APS component its downsampling conv keeps (else its choice)."""
        if phase is None:
            return super().forward(x)
        conv, *rest = self
        x = conv(x, phase)
        for m in rest:
            x = m(x)
        return x


def _is_plain_aps(module: nn.Module) -> bool:
    """An :class:`APS2d` without blur: what :class:`APSConv2d` implements."""
    return isinstance(module, APS2d) and module.blur is None and module.max_filter is None


def make_downsample(
    kind: str, channels: int, padding: str = "circular", blur: int = 3, max_filter: bool = False
) -> nn.Module:
    """Build a stride-2 downsampling stage.

    Parameters
    ----------
    kind
        ``maxpool`` (plain 2x2 max-pool, shift-variant), ``blurpool`` (max filter + blurred
        subsampling, Zhang 2019), ``aps`` (optional max filter + optional blur + adaptive
        polyphase sampling: exactly circular-shift invariant once globally pooled) or ``none``.
    channels
        Channels ``C`` of the ``(B, C, H, W)`` input.
    padding
        Padding mode for the max and blur filters.
    blur
        Binomial filter size for ``blurpool`` and ``aps`` (1 disables blurring).
    max_filter
        Precede ``aps`` with a dense 2x2 max filter (max-pool semantics; costs a full-size
        pass on CPU, so off by default).
    """
    if kind == "maxpool":
        return nn.MaxPool2d(2, ceil_mode=True)
    if kind == "blurpool":
        return nn.Sequential(MaxPoolStride1(padding), BlurPool2d(channels, blur, 2, padding))
    if kind == "aps":
        if max_filter and blur > 1:
            return nn.Sequential(MaxPoolStride1(padding), APS2d(channels, blur, padding))
        return APS2d(channels, blur, padding, max_filter)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {kind!r}")


def circular_centroid(x: Tensor) -> Tensor:
    """Each image's centroid on the circle per axis, ``(y, x)`` in pixels in ``(-N/2, N/2]``:
    the phase of the first Fourier harmonic of its row and column profiles (channels summed).
    A circular shift by ``t`` pixels moves it by ``t`` (mod ``N``).

    Shapes: ``(B, C, H, W)`` → ``(B, 2)`` float32.
    """
    return _first_harmonic(x)[0]


def _first_harmonic(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`circular_centroid` ``(B, 2)`` and the first harmonic's magnitude relative to
    the profile's absolute sum ``(B, 2)`` (near 0: no defined centroid)."""
    h, w = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):  # bf16 phases break the invariance
        xs = x.detach().float().sum(1)  # (B, H, W)
        t, strength = [], []
        for axis, n in ((1, h), (2, w)):
            profile = xs.sum(3 - axis)  # (B, n): sum over the other axis
            angle = 2 * torch.pi * torch.arange(n, device=x.device, dtype=torch.float32) / n
            c, s = profile @ torch.cos(angle), profile @ torch.sin(angle)
            t.append(torch.atan2(s, c) * (n / (2 * torch.pi)))
            magnitude = (c * c + s * s).sqrt()  # not hypot: it has no ONNX form
            strength.append(magnitude / profile.abs().sum(1).clamp_min(1e-30))
        return torch.stack(t, 1), torch.stack(strength, 1)


@functools.lru_cache(maxsize=16)
def _periodic_gaussian(n: int, sigma: float) -> Tensor:
    """``(n, n)`` symmetric circulant matrix of a periodic Gaussian blur of ``sigma`` px (a
    Gaussian in Fourier space: it commutes with circular and band-limited shifts, and with
    flips). Built in numpy: a constant for tracing and ONNX export."""
    f = np.fft.fftfreq(n)
    g = np.fft.ifft(np.exp(-2 * (np.pi * sigma * f) ** 2)).real
    i = np.arange(n)
    return torch.from_numpy(g[(i[:, None] - i[None, :]) % n].astype(np.float32))


def centroid_phases(x: Tensor, levels: int) -> Tensor:
    """APS phases ``(levels, B)`` (``2 * i + j``, ``-1``: by norm) of ``levels`` stride-2
    downsamplings of the maps of ``x (B, C, H, W)``: bit ``l`` of the nearest whole pixel
    to the :func:`circular_centroid` of ``x`` per axis for the ``l``-th.

    A circular shift of the image moves the centroid, and so the kept grid, with it: the
    same exact equivariance as keeping the component of largest norm, but every image is
    sampled on a grid anchored where it lies, not chosen by its content. Exact for each
    level whose map has an even size, ``H / 2**l`` (those :class:`APS2d` downsamples).
    Where the centroid is ambiguous (within 1e-3 px of a half pixel, e.g. an image
    mirror-symmetric about one, or a first harmonic under 1e-3 of the profile, e.g. a
    periodic image) the phase is ``-1``: the layers keep the component of largest norm.
    """
    h, w = x.shape[-2:]
    centroid, strength = _first_harmonic(x)
    # nearest whole pixel: a canonical image's centroid sits on one, where floor would flip
    whole = torch.floor(centroid + 0.5).long()
    rows, cols = whole[:, 0] % h, whole[:, 1] % w  # Python ints: no host-device copy
    level = torch.arange(levels, device=x.device)[:, None]
    bit = 2 ** level  # (floor division and remainder, not shifts: they export to ONNX)
    phases = 2 * (torch.div(rows, bit, rounding_mode="floor") % 2) + (
        torch.div(cols, bit, rounding_mode="floor") % 2)
    off = (centroid - torch.floor(centroid) - 0.5).abs()  # distance to a half pixel
    ambiguous = ((off < _CENTROID_TOL) | (strength < _CENTROID_TOL)).any(1)
    return phases.masked_fill(ambiguous, -1)


#: Distance to a half pixel, and first-harmonic strength, below which a centroid is ambiguous.
_CENTROID_TOL = 1e-3


def forward_at_centroid(layers: nn.Sequential, x: Tensor, canonical: nn.Module,
                        downs: list[bool]) -> Tensor:
    """Run ``layers`` on ``x`` (the output of ``canonical``), each layer flagged in ``downs``
    (it takes ``(x, phase)``) with the APS phases :func:`centroid_phases` gives for the
    centroid ``canonical`` centres (of ``x`` itself unless it is a :class:`ShiftCanonical`
    with a blur: of the local energy); an odd map passes APS unchanged and takes no level."""
    located = canonical.located(x) if isinstance(canonical, ShiftCanonical) else x
    phases = centroid_phases(located, sum(downs))
    level = 0
    for m, down in zip(layers, downs, strict=True):
        if down and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            x = m(x, phases[level])
            level += 1
        else:
            x = m(x)
    return x


class ShiftCanonical(nn.Module):
    """Shift each image so that the phase of its first Fourier harmonic per axis is fixed.

    A circular shift by ``t`` (integer or sub-pixel, band-limited) turns that phase by
    ``2 pi t / N``, so every shifted copy of an image is mapped to the same image: the
    model after it sees no shift at all. The harmonic's centroid is moved to the frame
    centre ``N // 2``. Rotations by 90° and flips of the input move the output by at most
    one whole pixel, which the exactly shift-invariant core absorbs (D4 invariance kept).

    ``blur > 0`` (>= 1.5 px): the centroid is that of the squared local energy,
    ``(G (G x)^2)^2`` for a periodic Gaussian blur ``G`` of ``blur`` px, not of the
    intensity. On zero-mean noisy images (cryo-EM particles after CTF) the intensity's first
    harmonic is mostly noise and jumps when content leaves the frame; the energy peaks on
    the particle and stays put (README, "Which centroid").

    Shapes: ``(B, C, H, W)`` → ``(B, C, H, W)``; channels are summed for the phase.
    """

    def __init__(self, blur: float = 0.0) -> None:
        super().__init__()
        # a narrower blur leaves the squares' spectra past Nyquist: sub-pixel shifts inexact
        if not (blur == 0 or (math.isfinite(blur) and blur >= 1.5)):
            raise ValueError(f"canonical_blur must be 0 or >= 1.5 px, got {blur!r}")
        self.blur = float(blur)

    def extra_repr(self) -> str:
        return f"blur={self.blur:g}"

    def shift(self, x: Tensor) -> Tensor:
        """The ``(dy, dx)`` each image is moved by: ``(B, C, H, W)`` → ``(B, 2)`` float32."""
        h, w = x.shape[-2:]
        target = torch.tensor([h // 2, w // 2], device=x.device, dtype=torch.float32)
        move = target - circular_centroid(self.located(x))
        if self.blur == 0:  # as models saved before the energy centroid were trained
            return move
        size = torch.tensor([h, w], device=x.device, dtype=torch.float32)
        # the shortest of the equivalent circular moves: no float ramp of a full period
        return torch.remainder(move + size / 2, size) - size / 2

    def located(self, x: Tensor) -> Tensor:
        """What the centroid is taken of: ``x`` or its local energy ``(B, 1, H, W)``."""
        if self.blur == 0:
            return x
        with torch.autocast(x.device.type, enabled=False):
            xs = x.detach().float()
            # int(): a traced (exported) model has a fixed size; the matrices are constants
            gy, gx = (_periodic_gaussian(int(n), self.blur).to(x.device) for n in xs.shape[-2:])
            # each square follows a blur: the map stays (nearly) band-limited
            energy = gy @ (gy @ xs @ gx).square().sum(1, keepdim=True) @ gx
            # squared again (over its mean): the particle outweighs the noise floor
            energy = (energy / energy.mean((2, 3), keepdim=True).clamp_min(1e-30)).square()
            # its mean holds no position; removed, it leaves float32 room for the harmonic
            return energy - energy.mean((2, 3), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return fourier_shift(x.float(), self.shift(x)).to(x.dtype)


def class_activation_map(feats: Tensor, weight: Tensor, canonical: nn.Module, x: Tensor) -> Tensor:
    """Class activation maps (Zhou et al. 2016) in the frame of the input ``x``.

    ``feats`` ``(B, F, h, w)`` (pooled features of ``canonical(x)``) and the head's
    ``weight`` ``(K, >= F)`` → ``(B, K, h, w)``; a :class:`ShiftCanonical` move is undone
    (scaled to the feature grid) so the maps lie over the image as given.
    """
    cam = feats.permute(0, 2, 3, 1).matmul(weight[:, : feats.shape[1]].t()).permute(0, 3, 1, 2)
    if isinstance(canonical, ShiftCanonical):
        scale = torch.tensor([cam.shape[-2] / x.shape[-2], cam.shape[-1] / x.shape[-1]],
                             device=x.device)
        cam = fourier_shift(cam.float(), -canonical.shift(x) * scale).to(cam.dtype)
    return cam
