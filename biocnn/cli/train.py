"""``biocnn train``: train the invariant core on labelled cryo-EM images.

DATA is a folder with one sub-folder of MRC files per class (``maps/<class>/*.mrcs``) or
a RELION STAR file whose ``--label-column`` holds the class. Options left out keep the
value of ``--config`` (a TOML file), else the defaults of
:class:`biocnn.config.CryoTrainConfig` (where every option's help and default live).

Examples
--------
    biocnn train maps/
    biocnn train --resume runs/train-20261205-101500      # after Ctrl-C, SIGTERM or a kill
    biocnn train --star particles.star --label-column rlnClassNumber --box 96 --epochs 30
    biocnn train maps/ --config configs/cryo_train.toml --model invariant \\
        --model-kwargs '{"widths": [32, 64, 128]}' --out runs/small
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer

from biocnn.cli.common import (
    cli_errors,
    config_options,
    console,
    data_source,
    err_console,
    timestamp,
)

__all__ = ["train", "register", "parse_model_kwargs"]


def parse_model_kwargs(text: str | None) -> dict | None:
    """``--model-kwargs`` JSON object → dict (None stays None)."""
    from biocnn.errors import BiocnnError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BiocnnError(f"--model-kwargs: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise BiocnnError("--model-kwargs: must be a JSON object, e.g. '{\"widths\": [16, 32]}'")
    return value


# --apix is the input pixel size (input_apix); as_volume is --volume/--stack
_FLAGS = {"apix": "--target-apix", "as_volume": "--volume/--stack"}


def train(
    data: Path = typer.Argument(None, show_default=False,
                                help="Folder of class folders, or a STAR file."),
    star: Path = typer.Option(None, help="STAR file of labelled particles (instead of DATA)."),
    config: Path = typer.Option(None, help="TOML config, e.g. configs/cryo_train.toml."),
    **options: Any,
) -> None:
    """Train a classifier; write checkpoints, metrics, curves, confusion matrix and run.json."""
    with cli_errors(_FLAGS):
        from biocnn.config import CryoTrainConfig, resolve
        from biocnn.engine import TrainingInterrupted
        from biocnn.tasks.train import run_train, train_tables

        cli = {**options, "data": data_source(data, star),
               "model_kwargs": parse_model_kwargs(options.get("model_kwargs"))}
        cfg = resolve(CryoTrainConfig(), config, cli, "train")
        if not cfg.out and not cfg.resume:
            cfg.out = str(Path("runs") / f"train-{timestamp()}")
        try:
            result = run_train(cfg, log=console.print)
        except TrainingInterrupted as stop:
            run = cfg.resume or cfg.out
            err_console.print(
                f"interrupted in epoch {stop.epoch} after step {stop.step}; state saved in "
                f"{stop.checkpoint}. Continue with: biocnn train --resume {run}",
                highlight=False, soft_wrap=True)
            raise typer.Exit(128 + stop.signum) from None
        for table in train_tables(result):
            console.print(table)
        files = ", ".join(sorted(p.name for p in result.out_dir.iterdir() if not p.name.startswith(".")))
        console.print(f"wrote {result.out_dir}/: {files}")


def _signature() -> inspect.Signature:
    """DATA, --star, --config, then one option per field of the train config."""
    from biocnn.config import CryoTrainConfig

    fixed = [p for p in inspect.signature(train).parameters.values() if p.name != "options"]
    return inspect.Signature(fixed + config_options(CryoTrainConfig, skip=("data",), flags=_FLAGS))


train.__signature__ = _signature()  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    """Attach ``biocnn train`` to the main app."""
    app.command("train")(train)
