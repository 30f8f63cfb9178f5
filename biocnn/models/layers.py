"""Small composable layers for shift-invariant CNNs.

* :class:`BlurPool2d` — anti-aliased downsampling (Zhang, ICML 2019).
* :class:`APS2d` — adaptive polyphase sampling (Chaman & Dokmanić, CVPR 2021): keep the
  polyphase component of largest norm, which makes stride-2 subsampling exactly
  equivariant (up to a shift) to circular shifts.
* :class:`GlobalPool2d` — global average / max / concatenated pooling.
* :class:`ConvBlock` — conv → norm → activation with a chosen padding mode.
* :func:`make_downsample` — one switch for ``maxpool|blurpool|aps|none``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PADDING_MODES",
    "DOWNSAMPLE_MODES",
    "POOL_MODES",
    "BlurPool2d",
    "APS2d",
    "MaxPoolStride1",
    "GlobalPool2d",
    "ConvBlock",
    "make_downsample",
]

PADDING_MODES = ("zeros", "circular", "reflect")
DOWNSAMPLE_MODES = ("maxpool", "blurpool", "aps", "none")
POOL_MODES = ("avg", "max", "avgmax")


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    """Pad ``(B, C, H, W)`` by ``(left, right, top, bottom)`` in a padding mode of this module."""
    if not any(pad):
        return x
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

    Maps with an odd height or width cannot be split evenly; they pass through unchanged
    (no downsampling), which keeps the exactness for every input size.

    Shapes: ``(B, C, H, W)`` → ``(B, C, H / 2, W / 2)`` for even ``H, W``.
    """

    def __init__(self, channels: int = 0, filt_size: int = 1, padding: str = "circular") -> None:
        super().__init__()
        self.blur = (
            BlurPool2d(channels, filt_size, stride=1, padding=padding) if filt_size > 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            return x
        if self.blur is not None:
            x = self.blur(x)
        # a view (B, C, H/2, 2, W/2, 2): polyphase component (i, j) is [:, :, :, i, :, j]
        comps = x.view(b, c, h // 2, 2, w // 2, 2)
        with torch.no_grad():
            norms = comps.float().square().sum(dim=(1, 2, 4)).view(b, 4)
            idx = norms.argmax(dim=1)
        rows = torch.arange(b, device=x.device)
        return comps[rows, :, :, idx // 2, :, idx % 2]


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


class GlobalPool2d(nn.Module):
    """Global pooling over all positions: ``(B, C, H, W)`` → ``(B, C)`` (``2C`` for avgmax)."""

    def __init__(self, mode: str = "avg") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3))
        if self.mode == "max":
            return x.amax(dim=(2, 3))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

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
    """``conv(k x k, stride 1, same size) → norm → act``: ``(B, Cin, H, W)`` → ``(B, Cout, H, W)``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        padding: str = "circular",
        norm: str = "batch",
        act: str = "relu",
    ) -> None:
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, padding=kernel_size // 2,
            padding_mode=padding, bias=norm == "none",
        )
        super().__init__(conv, _norm(norm, out_chans), _act(act))


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
        aps = APS2d(channels, blur, padding)
        return nn.Sequential(MaxPoolStride1(padding), aps) if max_filter else aps
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {kind!r}")
