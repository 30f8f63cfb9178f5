"""Exactly p4m-invariant CNNs: circular shifts, 90° rotations and flips (the group D4).

Group-equivariant convolutions (Cohen & Welling 2016) on the 8-element group D4, with
circular padding and adaptive polyphase sampling (APS), then pooling over the group and
over all positions. Every layer commutes with circular shifts and with the 8 D4
transforms of the image (``torch.rot90`` / ``torch.flip``, which act on the pixel torus
for any size), so the logits are exactly invariant to every combination of them.

* Group feature maps are ``(B, C * 8, H, W)``: channel ``c`` holds its 8 group copies at
  ``8 c .. 8 c + 7`` (a view ``(B, C, 8, H, W)``).
* :class:`D4LiftConv2d` correlates the image with the 8 rotated/flipped copies of each
  filter; :class:`D4GroupConv2d` correlates group maps with filters transformed *and*
  with their group axis permuted. Both build one ordinary conv weight from the shared
  parameters by a precomputed gather, so the fast :func:`~biocnn.models.layers.aps_conv2d`
  applies unchanged.
* APS keeps the polyphase component of largest norm over *all* channels and group copies.
  For even sizes ``rot90``/``flip`` map polyphase components onto polyphase components
  (``i -> N - 1 - i`` flips the parity) and permute the group copies, so those norms are
  invariant over the group orbit and the kept component transforms with the input.
* Normalisation statistics and affine parameters are per channel, shared by its 8 group
  copies (BatchNorm / GroupNorm on the view ``(B, C, 8 H, W)``).

Element ``e = 4 m + r`` of D4 is "flip the width axis ``m`` times, then ``rot90`` ``r``
times": :func:`d4_transform`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biocnn.models.invariant import APS_PHASES
from biocnn.models.layers import (
    BLOCK_ORDERS,
    APS2d,
    GlobalPool2d,
    ShiftCanonical,
    _act,
    _norm,
    _phase_groups,
    aps_conv2d,
    circular_pad,
    class_activation_map,
    forward_at_centroid,
)
from biocnn.models.registry import register_model

__all__ = [
    "D4_ORDER",
    "d4_transform",
    "D4LiftConv2d",
    "D4GroupConv2d",
    "D4InvariantCNN",
    "invariant_d4",
    "invariant_d4_m",
]

#: Number of elements of D4.
D4_ORDER = 8
GROUP_POOL_MODES = ("max", "avg")


def d4_transform(x: Tensor, e: int) -> Tensor:
    """Apply D4 element ``e = 4 m + r`` to the last two axes: flip W if ``m``, then ``rot90`` r times.

    Shapes: ``(..., H, W)`` → ``(..., H, W)`` (``(..., W, H)`` for odd ``r``).
    """
    if e >= 4:
        x = x.flip(-1)
    return torch.rot90(x, e % 4, dims=(-2, -1))


def _cayley_table() -> tuple[list[list[int]], list[int]]:
    """``mul[a][b]`` = index of ``T_a ∘ T_b`` and ``inv[a]``, read off a pattern without symmetry."""
    probe = torch.arange(9).view(3, 3)
    images = [d4_transform(probe, e) for e in range(D4_ORDER)]
    index = {tuple(im.flatten().tolist()): e for e, im in enumerate(images)}
    mul = [[index[tuple(d4_transform(images[b], a).flatten().tolist())] for b in range(D4_ORDER)]
           for a in range(D4_ORDER)]
    inv = [row.index(0) for row in mul]
    return mul, inv


_MUL, _INV = _cayley_table()


def _expand_index(kernel_size: int, lifting: bool) -> Tensor:
    """Gather indices from the shared filter to the 8 transformed filters.

    Lifting: ``(8, k, k)`` indices into the ``k * k`` taps. Group conv: ``(8, 8, k, k)``
    indices into the ``8 * k * k`` (group, tap) entries: output copy ``h`` takes copy
    ``h^-1 g`` of the filter at input copy ``g``, transformed by ``h``.
    """
    k = kernel_size
    if lifting:
        taps = torch.arange(k * k).view(k, k)
        return torch.stack([d4_transform(taps, h) for h in range(D4_ORDER)])
    taps = torch.arange(D4_ORDER * k * k).view(D4_ORDER, k, k)
    return torch.stack([d4_transform(taps[[_MUL[_INV[h]][g] for g in range(D4_ORDER)]], h)
                        for h in range(D4_ORDER)])


class _D4Conv(nn.Module, ABC):
    """Shared machinery: expand the weight, circular conv, optional APS (fast or reference)."""

    weight: nn.Parameter
    index: Tensor

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, aps: bool, fast: bool,
                 bias: bool, max_filter: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_chans, self.out_chans, self.kernel_size = in_chans, out_chans, kernel_size
        self.aps, self.fast, self.max_filter = aps, fast, max_filter and aps
        # one bias per channel, shared by its group copies
        self.bias = nn.Parameter(torch.zeros(out_chans)) if bias else None

    @abstractmethod
    def expanded_weight(self) -> Tensor:
        """The ordinary conv weight ``(C_out * 8, C_in * G_in, k, k)`` (``G_in`` = 1 or 8)."""

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        """``phase (B,)``: the APS component to keep (see :func:`centroid_phases`)."""
        weight = self.expanded_weight()
        bias = None if self.bias is None else self.bias.repeat_interleave(D4_ORDER)
        if self.aps and self.fast and not self.max_filter:
            return aps_conv2d(x, weight, bias, phase)
        p = self.kernel_size // 2
        y = F.conv2d(circular_pad(x, (p, p, p, p)), weight, bias)
        if not self.aps:
            return y
        if self.max_filter:  # 3x3, centred: unchanged by rotations and flips, unlike 2x2
            y = circular_pad(y, (1, 1, 1, 1))
            h, w = x.shape[-2:]
            if (self.fast and phase is not None and h % 2 == 0 and w % 2 == 0
                    and bool((phase >= 0).all())):
                return _strided_max(y, phase)
            y = F.max_pool2d(y, 3, stride=1)
        return APS2d()(y) if phase is None else APS2d()(y, phase)

    def extra_repr(self) -> str:
        return (f"{self.in_chans}, {self.out_chans}, kernel_size={self.kernel_size}, "
                f"aps={self.aps}, bias={self.bias is not None}")


def _strided_max(yp: Tensor, phase: Tensor) -> Tensor:
    """Component ``phase (B,)`` of the dense 3x3 max filter of ``yp (B, C, H + 2, W + 2)`` (a
    map padded by one): a stride-2 max-pool from the phase's offset, one per phase present
    (the dense filter, 4x the outputs, is never formed). Shapes: → ``(B, C, H / 2, W / 2)``."""
    groups = _phase_groups(phase)
    if len(groups) == 1:
        q = groups[0][0]
        return F.max_pool2d(yp[:, :, q // 2 :, q % 2 :], 3, stride=2)
    out = None
    for q, sel in groups:  # the groups cover every sample: each row is written once
        part = F.max_pool2d(yp[sel][:, :, q // 2 :, q % 2 :], 3, stride=2)
        out = part.new_empty((len(yp), *part.shape[1:])) if out is None else out
        out.index_copy_(0, sel, part)
    assert out is not None
    return out


class D4LiftConv2d(_D4Conv):
    """Lifting conv: each of ``C_out`` filters in its 8 D4 copies, weights shared.

    With ``aps=True`` followed by APS (stride 2), computed by
    :func:`~biocnn.models.layers.aps_conv2d` when ``fast`` (same output, same parameters).

    Shapes: ``(B, C_in, H, W)`` → ``(B, C_out * 8, H, W)`` (``H / 2, W / 2`` with APS on even sizes).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, aps: bool = False,
                 fast: bool = True, bias: bool = False, max_filter: bool = False) -> None:
        super().__init__(in_chans, out_chans, kernel_size, aps, fast, bias, max_filter)
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, k, k))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        self.register_buffer("index", _expand_index(k, lifting=True).flatten(), persistent=False)

    def expanded_weight(self) -> Tensor:
        c_out, c_in, k, _ = self.weight.shape
        w = self.weight.reshape(c_out, c_in, k * k)[:, :, self.index]  # (C_out, C_in, 8 k k)
        return w.view(c_out, c_in, D4_ORDER, k, k).transpose(1, 2).reshape(
            c_out * D4_ORDER, c_in, k, k)


class D4GroupConv2d(_D4Conv):
    """Group conv on D4 feature maps: filters ``(C_out, C_in, 8, k, k)``, each output copy
    ``h`` uses the filter transformed by ``h`` with its group axis permuted to ``h^-1 g``.

    Shapes: ``(B, C_in * 8, H, W)`` → ``(B, C_out * 8, H, W)`` (``H / 2, W / 2`` with APS on even
    sizes).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, aps: bool = False,
                 fast: bool = True, bias: bool = False, max_filter: bool = False) -> None:
        super().__init__(in_chans, out_chans, kernel_size, aps, fast, bias, max_filter)
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, D4_ORDER, k, k))
        # the fan-in of the expanded conv, C_in * 8 * k^2, as nn.Conv2d would use
        nn.init.kaiming_uniform_(self.weight.view(out_chans, -1, k, k), a=5**0.5)
        self.register_buffer("index", _expand_index(k, lifting=False).flatten(), persistent=False)

    def expanded_weight(self) -> Tensor:
        c_out, c_in, g, k, _ = self.weight.shape
        w = self.weight.reshape(c_out, c_in, g * k * k)[:, :, self.index]  # (C_out, C_in, 8 8 k k)
        w = w.view(c_out, c_in, D4_ORDER, g, k, k).transpose(1, 2)  # (C_out, 8, C_in, 8, k, k)
        return w.reshape(c_out * D4_ORDER, c_in * g, k, k)


class _GroupNorm(nn.Module):
    """Normalisation per channel shared by its 8 group copies: on the view ``(B, C, 8 H, W)``."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        self.norm = _norm(kind, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c8, h, w = x.shape
        return self.norm(x.view(b, c8 // D4_ORDER, D4_ORDER * h, w)).view(b, c8, h, w)


class D4Block(nn.Sequential):
    """``conv (lifting or group) → [APS] → norm → act`` on D4 feature maps.

    Shapes: ``(B, C_in [* 8], H, W)`` → ``(B, C_out * 8, H', W')``.
    """

    def __init__(self, in_chans: int, out_chans: int, lifting: bool, aps: bool = False,
                 norm: str = "batch", act: str = "relu", fast: bool = True,
                 max_filter: bool = False) -> None:
        conv_cls = D4LiftConv2d if lifting else D4GroupConv2d
        conv = conv_cls(in_chans, out_chans, 3, aps=aps, fast=fast, bias=norm == "none",
                        max_filter=max_filter)
        super().__init__(conv, _GroupNorm(norm, out_chans), _act(act))

    def forward(self, x: Tensor, phase: Tensor | None = None) -> Tensor:
        """``phase (B,)``: passed to the conv's APS."""
        x = self[0](x) if phase is None else self[0](x, phase)
        return self[2](self[1](x))


class D4InvariantCNN(nn.Module):
    """p4m-equivariant stages + group pooling + global pooling + linear head.

    Exactly invariant to circular shifts, ``rot90`` and flips of the input (any size; APS
    passes odd sizes through).

    Parameters
    ----------
    num_classes
        Output logits ``K``.
    in_chans
        Input channels ``C``.
    widths
        Channels of each stage, counted per group orbit (each holds 8 group copies; the
        first block lifts the image, the rest are group convs).
    depths
        Conv blocks per stage (an int applies to every stage); APS (stride 2) between stages.
    pool
        Global pooling over positions ``avg|max|avgmax``.
    group_pool
        Pooling over the 8 group copies of each channel ``max|avg`` (before ``pool``).
    norm, act
        Normalisation (``batch|group|none``, shared by the group copies) and activation.
    dropout
        Dropout on the pooled features.
    order
        ``conv_down_norm`` (APS right after the last conv of a stage) or ``conv_norm_down``
        (a separate APS layer after its activation).
    fast
        Compute ``conv → APS`` with :func:`~biocnn.models.layers.aps_conv2d`; ``False``
        builds the reference composition (same parameters, same outputs).
    canonical
        Start with :class:`~biocnn.models.layers.ShiftCanonical`: every circular shift of
        an image, sub-pixel (band-limited) ones included, gives the same logits.
    phase
        ``norm`` (APS keeps the component of largest norm over all channels and copies) or
        ``centroid`` (a grid anchored at the input's centroid, the one ``canonical``
        centres if set; see :class:`~biocnn.models.invariant.InvariantCNN`). Both exact.
    canonical_blur
        With ``canonical``: centre the local energy, not the intensity (0); see
        :class:`~biocnn.models.invariant.InvariantCNN`.
    max_filter
        A dense 3x3 max filter before each APS in a block (``conv_down_norm``): max-pool
        semantics, centred so that rotations and flips leave it unchanged.

    Shapes: ``(B, C, H, W)`` → ``(B, K)`` for any ``H, W``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (12, 24, 40),
        depths: int | Sequence[int] = 1,
        pool: str = "avgmax",
        group_pool: str = "max",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        order: str = "conv_down_norm",
        fast: bool = True,
        canonical: bool = False,
        phase: str = "norm",
        canonical_blur: float = 0.0,
        max_filter: bool = False,
    ) -> None:
        super().__init__()
        if order not in BLOCK_ORDERS:
            raise ValueError(f"order must be one of {BLOCK_ORDERS}, got {order!r}")
        if phase not in APS_PHASES:
            raise ValueError(f"phase must be one of {APS_PHASES}, got {phase!r}")
        if max_filter and order != "conv_down_norm":
            raise ValueError("max_filter needs order='conv_down_norm' (APS inside the blocks)")
        self.phase = phase
        if group_pool not in GROUP_POOL_MODES:
            raise ValueError(f"group_pool must be one of {GROUP_POOL_MODES}, got {group_pool!r}")
        widths = list(widths)
        depths = [depths] * len(widths) if isinstance(depths, int) else list(depths)
        if len(depths) != len(widths) or not widths:
            raise ValueError("widths and depths must have the same, non-zero length")
        if min(depths) < 1:
            raise ValueError("depths must be >= 1")
        in_block = order == "conv_down_norm"
        layers: list[nn.Module] = []
        prev = in_chans
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            if i > 0 and not in_block:
                layers.append(APS2d())
            for d in range(depth):
                aps = in_block and i < len(widths) - 1 and d == depth - 1
                layers.append(D4Block(prev, width, lifting=not layers, aps=aps, norm=norm,
                                      act=act, fast=fast, max_filter=max_filter))
                prev = width
        self.features = nn.Sequential(*layers)
        self.group_pool = group_pool
        self.pool = GlobalPool2d(pool)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(prev * self.pool.expansion, num_classes)
        )
        self.num_features = prev
        self.canonical = ShiftCanonical(canonical_blur) if canonical else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Group-pooled feature maps: ``(B, C, H, W)`` → ``(B, F, h, w)``, equivariant to the
        input's shifts and D4 transforms."""
        x = self.canonical(x).contiguous()  # group maps are viewed per D4 element: NCHW only
        if self.phase == "norm":
            y = self.features(x)
        else:
            downs = [isinstance(m, APS2d) or (isinstance(m, D4Block) and m[0].aps)
                     for m in self.features]
            y = forward_at_centroid(self.features, x, self.canonical, downs)
        b, c8, h, w = y.shape
        y = y.view(b, c8 // D4_ORDER, D4_ORDER, h, w)
        return y.amax(dim=2) if self.group_pool == "max" else y.mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.forward_features(x)))

    def class_activation_map(self, x: Tensor) -> Tensor:
        """Class activation maps ``(B, C, H, W)`` → ``(B, K, h, w)`` on the group-pooled
        features (exact for ``pool="avg"``; the averaged half for ``avgmax``)."""
        return class_activation_map(self.forward_features(x), self.head[-1].weight, self.canonical, x)


@register_model
def invariant_d4(num_classes: int = 10, in_chans: int = 1, **kw) -> D4InvariantCNN:
    """Exactly shift-, rotation- (90°) and flip-invariant core, MNIST sized (like ``invariant``)."""
    return D4InvariantCNN(num_classes, in_chans, **kw)


@register_model
def invariant_d4_m(num_classes: int = 10, in_chans: int = 1, **kw) -> D4InvariantCNN:
    """p4m-invariant core for cryo-EM images (64-256 px): the parameter count of
    ``invariant_m(widths=[16, 32, 64, 128])`` (~0.3 M) at <= 2x its training cost per image
    (without the max filter; with it, as ``biocnn train`` builds both, 1.8x).

    A group conv uses each parameter 8 times per pixel, so the parameters sit one
    resolution level lower than in ``invariant_m``: the lifting conv downsamples at once
    (a stage of depth 1), then single group convs at 1/2 and 1/4 of the input size and two
    blocks at 1/8 and 1/16.
    """
    defaults = {"widths": (4, 8, 16, 32, 36), "depths": (1, 1, 1, 2, 2), "pool": "avg",
                "dropout": 0.1}
    return D4InvariantCNN(num_classes, in_chans, **{**defaults, **kw})
