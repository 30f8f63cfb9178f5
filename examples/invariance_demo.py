"""Show, in a few lines, what "exactly shift-invariant" means for biocnn's core.

    python examples/invariance_demo.py

Builds an untrained ``invariant`` model and a ``gap_zero_pad`` control, shifts a random
image circularly by every offset on a coarse grid, and prints the largest change of the
logits each model shows.
"""

from __future__ import annotations

import torch

import biocnn


def max_logit_change(model: torch.nn.Module, image: torch.Tensor, step: int = 3) -> float:
    """Largest |logit(shifted) - logit(original)| over circular shifts on a ``step`` grid.

    ``image`` is ``(1, C, H, W)``.
    """
    with torch.no_grad():
        ref = model(image)
        worst = 0.0
        for dy in range(0, image.shape[-2], step):
            for dx in range(0, image.shape[-1], step):
                out = model(torch.roll(image, (dy, dx), (2, 3)))
                worst = max(worst, (out - ref).abs().max().item())
    return worst


def main() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 1, 64, 64)
    for name in ("invariant", "invariant_blurpool", "gap_zero_pad"):
        model = biocnn.create_model(name, num_classes=4).eval()
        print(f"{name:20s} max logit change over circular shifts: {max_logit_change(model, image):.2e}")


if __name__ == "__main__":
    main()
