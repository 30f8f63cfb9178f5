"""``biocnn calibrate``: fit a temperature and a P(good) threshold on held-out data.

Writes a copy of the checkpoint with ``temperature``, ``threshold`` and the held-out
metrics, which ``biocnn select`` applies by default.

Examples
--------
    biocnn calibrate runs/selector/best.pt ca_heldout/ --out selector.pt
    biocnn calibrate best.pt heldout/ --out calibrated.pt --good-class particles
"""

from __future__ import annotations

from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console

__all__ = ["calibrate", "register"]


def calibrate(
    checkpoint: Path = typer.Argument(..., show_default=False,
                                      help="Checkpoint from `biocnn train` (best.pt)."),
    data: Path = typer.Argument(..., show_default=False,
                                help="Labelled held-out data: folder per class or STAR file."),
    out: Path = typer.Option(..., "--out", show_default=False, help="Calibrated checkpoint to write."),
    good_class: str = typer.Option("good", help="The class whose probability is thresholded."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="Replace an existing output file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Temperature-scale a classifier and choose its threshold on held-out data."""
    with cli_errors(flags={"model": "CHECKPOINT", "data": "DATA"}):
        from biocnn.tasks.calibrate import CalibrateConfig, run_calibrate

        run_calibrate(CalibrateConfig(model=str(checkpoint), data=str(data), out=str(out),
                                      good_class=good_class, batch_size=batch_size,
                                      device=device, overwrite=overwrite, progress=progress),
                      log=console.print)


def register(app: typer.Typer) -> None:
    """Attach ``biocnn calibrate`` to the main app."""
    app.command("calibrate")(calibrate)
