"""The global-pooled CNN core shared by the MNIST baseline and the cryo-EM classifier.

Stages of stride-1 conv blocks separated by stride-2 downsampling, then a global pool and
a linear head. The head sees only pooled features, so no absolute position is left to
learn. With ``padding="circular"`` and ``downsample="aps"`` every layer is equivariant to
circular shifts and the pooled output is *exactly* invariant to them.

The block order is an explicit option, ``order``:

* ``"conv_down_norm"`` (default): the last block of each stage but the last is
  ``conv → down → norm → act``. With plain APS (``blur=1``, no max filter) its conv is an
  :class:`~biocnn.models.layers.APSConv2d`, which computes and back-propagates a quarter
  of the full-size activations; otherwise a :class:`~biocnn.models.layers.DownConv2d`
  with the same parameters (``fast=False`` forces it). Either way the same topology and
  state_dict keys.
* ``"conv_norm_down"``: stages of ``conv → norm → act`` blocks with a separate
  downsampling layer between them (the classic layout; ``gap_zero_pad``,
  ``invariant_blurpool``).

APS keeps, per map, the polyphase component of largest norm (``phase="norm"``), or the one
on a grid anchored at the input's circular centroid (``phase="centroid"``): images that lie
alike are then sampled alike, as by a fixed max-pool, and the invariance stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from biocnn.models.layers import (
    BLOCK_ORDERS,
    DOWNSAMPLE_MODES,
    PADDING_MODES,
    APS2d,
    APSConv2d,
    ConvBlock,
    DownConv2d,
    GlobalPool2d,
    ShiftCanonical,
    class_activation_map,
    forward_at_centroid,
    make_downsample,
)
from biocnn.models.registry import register_model

#: How APS picks its component (see :class:`InvariantCNN`).
APS_PHASES = ("norm", "centroid")

__all__ = [
    "APS_PHASES",
    "InvariantCNN",
    "invariant",
    "invariant_blurpool",
    "invariant_m",
    "gap_zero_pad",
]


class InvariantCNN(nn.Module):
    """Conv stages + global pooling + linear head; works for any input size and channels.

    Parameters
    ----------
    num_classes
        Output logits ``K``.
    in_chans
        Input channels ``C``.
    widths
        Channels of each stage; a downsampling layer sits between consecutive stages.
    depths
        Conv blocks per stage (an int applies to every stage).
    padding
        ``zeros|circular|reflect`` for every conv, max and blur filter.
    downsample
        ``maxpool|blurpool|aps|none`` between stages.
    pool
        Global pooling ``avg|max|avgmax``.
    norm, act
        Normalisation (``batch|group|none``) and activation (``relu|gelu|silu|tanh``).
    blur
        Binomial filter size used by ``blurpool`` / ``aps`` (1 = none).
    max_filter
        Dense 2x2 max filter before ``aps`` subsampling.
    dropout
        Dropout on the pooled features.
    order
        ``conv_down_norm|conv_norm_down``: downsampling right after the last conv of a
        stage or after its activation (see the module docstring).
    fast
        Use :class:`~biocnn.models.layers.APSConv2d` where it computes the block exactly;
        ``False`` builds the reference composition. Outputs and state_dict are the same.
    canonical
        Start with :class:`~biocnn.models.layers.ShiftCanonical`: every circular shift of
        an image, sub-pixel (band-limited) ones included, gives the same logits.
    canonical_blur
        With ``canonical``: centre the local energy of the image blurred by a Gaussian of
        this many px (>= 1.5), not its intensity (0); steady on zero-mean noisy images
        such as cryo-EM particles, where content entering or leaving the frame moves the
        intensity's centroid by pixels.
    phase
        How ``aps`` picks the kept polyphase component: ``norm`` (largest norm, per map) or
        ``centroid`` (a grid anchored at the input's whole-pixel circular centroid,
        :func:`~biocnn.models.layers.centroid_phases`).
        Both are exact; ``centroid`` samples alike images alike, as a fixed max-pool would
        (an image with an ambiguous centroid falls back to ``norm``).

    Shapes: ``(B, C, H, W)`` → ``(B, K)`` for any ``H, W``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        depths: int | Sequence[int] = 1,
        padding: str = "circular",
        downsample: str = "aps",
        pool: str = "avgmax",
        norm: str = "batch",
        act: str = "relu",
        blur: int = 1,
        max_filter: bool = False,
        dropout: float = 0.0,
        order: str = "conv_down_norm",
        fast: bool = True,
        canonical: bool = False,
        phase: str = "norm",
        canonical_blur: float = 0.0,
    ) -> None:
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {downsample!r}")
        if order not in BLOCK_ORDERS:
            raise ValueError(f"order must be one of {BLOCK_ORDERS}, got {order!r}")
        if phase not in APS_PHASES:
            raise ValueError(f"phase must be one of {APS_PHASES}, got {phase!r}")
        if phase == "centroid" and downsample != "aps":
            raise ValueError("phase='centroid' needs downsample='aps'")
        if phase == "centroid" and max_filter and blur > 1:
            raise ValueError("phase='centroid' takes max_filter or blur > 1, not both")
        self.phase = phase
        widths = list(widths)
        depths = [depths] * len(widths) if isinstance(depths, int) else list(depths)
        if len(depths) != len(widths):
            raise ValueError("widths and depths must have the same length")
        if min(depths) < 1:
            raise ValueError("depths must be >= 1")
        in_block = order == "conv_down_norm" and downsample != "none"
        layers: list[nn.Module] = []
        prev = in_chans
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            if i > 0 and not in_block:
                layers.append(make_downsample(downsample, prev, padding, blur, max_filter))
            for d in range(depth):
                last = in_block and i < len(widths) - 1 and d == depth - 1
                down = make_downsample(downsample, width, padding, blur, max_filter) if last else None
                layers.append(ConvBlock(prev, width, 3, padding, norm, act, down=down, fast=fast))
                prev = width
        self.features = nn.Sequential(*layers)
        self.pool = GlobalPool2d(pool)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(prev * self.pool.expansion, num_classes)
        )
        self.num_features = prev
        self.canonical = ShiftCanonical(canonical_blur) if canonical else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps before pooling: ``(B, C, H, W)`` → ``(B, F, h, w)``."""
        x = self.canonical(x)
        if self.phase == "norm":
            return self.features(x)
        downs = [isinstance(m, APS2d) or (isinstance(m, ConvBlock)
                                          and isinstance(m[0], DownConv2d | APSConv2d))
                 for m in self.features]
        return forward_at_centroid(self.features, x, self.canonical, downs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.forward_features(x)))

    def class_activation_map(self, x: Tensor) -> Tensor:
        """Class activation maps (Zhou et al. 2016) for every class.

        ``(B, C, H, W)`` → ``(B, K, h, w)``: the head's weights applied at each position of
        the last feature map (exact for ``pool="avg"``; the averaged half for ``avgmax``).
        """
        return class_activation_map(self.forward_features(x), self.head[-1].weight, self.canonical, x)


@register_model
def invariant(num_classes: int = 10, in_chans: int = 1, **kw) -> InvariantCNN:
    """Exactly circular-shift-invariant core: circular padding + APS + global average pool."""
    return InvariantCNN(num_classes, in_chans, **{"padding": "circular", "downsample": "aps", **kw})


@register_model
def invariant_blurpool(num_classes: int = 10, in_chans: int = 1, **kw) -> InvariantCNN:
    """Anti-aliased variant (Zhang 2019): circular padding + BlurPool; nearly invariant."""
    defaults = {"padding": "circular", "downsample": "blurpool", "blur": 3, "order": "conv_norm_down"}
    return InvariantCNN(num_classes, in_chans, **{**defaults, **kw})


@register_model
def invariant_m(num_classes: int = 10, in_chans: int = 1, **kw) -> InvariantCNN:
    """Deeper exact core for cryo-EM images (64-256 px): 4 stages of 2 blocks."""
    defaults = {
        "widths": (32, 64, 128, 256), "depths": 2, "padding": "circular",
        "downsample": "aps", "pool": "avg", "dropout": 0.1,
    }
    return InvariantCNN(num_classes, in_chans, **{**defaults, **kw})


@register_model
def gap_zero_pad(num_classes: int = 10, in_chans: int = 1, **kw) -> InvariantCNN:
    """Global-pooled head with ordinary zero padding and max-pool: no FC position, not exact."""
    defaults = {"padding": "zeros", "downsample": "maxpool", "order": "conv_norm_down"}
    return InvariantCNN(num_classes, in_chans, **{**defaults, **kw})
