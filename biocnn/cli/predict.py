"""``biocnn predict``: classify images, stacks, volumes or STAR files with a trained model.

Preprocessing and volume views are those recorded in the checkpoint, so prediction
repeats training exactly; stacks are streamed in batches sized by bytes (memory stays flat
however large the images and stacks are).

Examples
--------
    biocnn predict slice.mrc --model runs/train-x/best.pt
    biocnn predict 'Extract/*.mrcs' --model best.pt --csv pred.csv --star pred.star --tta
    biocnn predict Extract/job005/particles.star --model best.pt --select good \
        --out-stack Select/good.mrcs          # also writes Select/good.star (RELION 3.1+)
    biocnn predict J12_particles.cs --cs-project /cryosparc/P3 --model best.pt \
        --select good --out-cs good.cs
    biocnn predict stack.mrc --model best.pt --stack --apix 1.06
    biocnn predict map.mrc --model best.pt --slices all --json
    biocnn predict stack.mrcs --model best.pt --cam cam.png --cam-count 24
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from biocnn.cli.common import add_config_options, cli_errors, console, err_console
from biocnn.config import PredictConfig, describe

__all__ = ["predict", "register"]


def predict(
    inputs: list[str] = typer.Argument(..., show_default=False,
                                       help=describe(PredictConfig, "inputs")),
    config: Path = typer.Option(None, help="TOML config with these options."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    **options: Any,
) -> None:
    """Predict the class of every image; print a table (or JSON) and write the outputs asked for."""
    with cli_errors():
        from biocnn.config import resolve
        from biocnn.report import prediction_json, prediction_tables
        from biocnn.tasks.predict import run_predict

        cfg = resolve(PredictConfig(), config, {**options, "inputs": tuple(inputs)})
        log = err_console if json_out else console
        result = run_predict(cfg, log=log.print)
        for table in prediction_tables(result):
            log.print(table)
        for written in result.written:
            log.print(f"wrote {written}")
        if json_out:
            typer.echo(json.dumps(prediction_json(result), indent=2))


add_config_options(predict, PredictConfig, skip=("inputs",), aliases={"model": "-m"})


def register(app: typer.Typer) -> None:
    """Attach ``biocnn predict`` to the main app."""
    app.command("predict")(predict)
