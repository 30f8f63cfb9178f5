"""``biocnn export``: write a checkpoint as ONNX (input standardisation included).

The graph takes the raw images resampled to the checkpoint's box and pixel size,
``images (B, 1, box, box)`` float32, and returns ``logits (B, K)``; APS's per-sample phase
choice is kept as ``ArgMax`` nodes (see :mod:`biocnn.export`).

Examples
--------
    biocnn export runs/train-x/best.pt --onnx model.onnx
    biocnn export best.pt --onnx model.onnx --overwrite
"""

from __future__ import annotations

from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console

__all__ = ["export", "register"]


def export(
    checkpoint: Path = typer.Argument(..., show_default=False,
                                      help="Checkpoint from `biocnn train` (best.pt)."),
    onnx: Path = typer.Option(..., "--onnx", show_default=False, help="ONNX file to write."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="Replace an existing output file."),
) -> None:
    """Export a checkpoint (standardisation + model) to ONNX."""
    with cli_errors():
        from biocnn.atomic import check_outputs
        from biocnn.export import export_onnx

        out = check_outputs({"onnx": onnx}, inputs=[checkpoint], overwrite=overwrite)["onnx"]
        path, argmaxes = export_onnx(checkpoint, out)
        console.print(f"wrote {path} (input 'images' (B, 1, box, box) raw, output 'logits'; "
                      f"{argmaxes} APS ArgMax node(s))")


def register(app: typer.Typer) -> None:
    """Attach ``biocnn export`` to the main app."""
    app.command("export")(export)
