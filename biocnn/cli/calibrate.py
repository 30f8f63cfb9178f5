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
from typing import Any

import typer

from biocnn.cli.common import add_config_options, cli_errors, console
from biocnn.config import CalibrateConfig, describe

__all__ = ["calibrate", "register"]


def calibrate(
    checkpoint: Path = typer.Argument(..., show_default=False,
                                      help=describe(CalibrateConfig, "model")),
    data: Path = typer.Argument(..., show_default=False, help=describe(CalibrateConfig, "data")),
    **options: Any,
) -> None:
    """Temperature-scale a classifier and choose its threshold on held-out data."""
    with cli_errors(flags={"model": "CHECKPOINT", "data": "DATA"}):
        from biocnn.config import merge
        from biocnn.tasks.calibrate import run_calibrate

        cfg = merge(CalibrateConfig(), {**options, "model": str(checkpoint), "data": str(data)})
        run_calibrate(cfg, log=console.print)


add_config_options(calibrate, CalibrateConfig, skip=("model", "data"), required=("out",))


def register(app: typer.Typer) -> None:
    """Attach ``biocnn calibrate`` to the main app."""
    app.command("calibrate")(calibrate)
