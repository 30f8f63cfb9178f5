"""The seed LeNet: a replica of MXNet's ``lenet_with_mxdataiter.cpp``.

``conv5x5x20 → tanh → maxpool2 → conv5x5x50 → tanh → maxpool2 → FC500 → tanh → FC10``.
Its fully connected head sees every feature at its absolute position, which is why it
fails on digits moved into a corner: the baseline that biocnn's invariant core fixes.
"""

from __future__ import annotations

from torch import Tensor, nn

from biocnn.models.registry import register_model

__all__ = ["LeNetFC", "lenet_fc"]


class LeNetFC(nn.Module):
    """LeNet with a position-bound fully connected head.

    Parameters
    ----------
    num_classes
        Output logits ``K``.
    in_chans
        Input channels ``C``.
    img_size
        Input height = width ``S``; fixes the size of the first FC layer
        (431,080 parameters for ``S = 28``, ``C = 1``, ``K = 10``).

    Shapes: ``(B, C, S, S)`` → ``(B, K)``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28) -> None:
        super().__init__()
        side = ((img_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"lenet_fc needs img_size >= 16, got {img_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 20, 5), nn.Tanh(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.Tanh(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * side * side, 500), nn.Tanh(), nn.Linear(500, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register_model
def lenet_fc(num_classes: int = 10, in_chans: int = 1, img_size: int = 28) -> LeNetFC:
    """The MXNet LeNet replica (fully connected head; not shift-invariant)."""
    return LeNetFC(num_classes, in_chans, img_size)
