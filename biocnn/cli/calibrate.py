"""``biocnn calibrate``: fit a temperature and a P(good) threshold on held-out data.

Writes a copy of the checkpoint with ``temperature``, ``threshold`` and the held-out
metrics, which ``biocnn select`` applies by default.

Examples
--------
    biocnn calibrate runs/selector/best.pt ca_heldout/ --out selector.pt
    biocnn calibrate best.pt heldout/ --out calibrated.pt --good-class particles
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from biocnn.cli.common import cli_errors, config_options, console
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


def _signature() -> inspect.Signature:
    """CHECKPOINT, DATA, then one option per field of the calibrate config (--out required)."""
    fixed = [p for p in inspect.signature(calibrate).parameters.values() if p.name != "options"]
    return inspect.Signature(fixed + config_options(CalibrateConfig, skip=("model", "data"),
                                                    required=("out",)))


calibrate.__signature__ = _signature()  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    """Attach ``biocnn calibrate`` to the main app."""
    app.command("calibrate")(calibrate)
