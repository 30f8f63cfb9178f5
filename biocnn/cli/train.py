"""``biocnn train``: train the invariant core on labelled cryo-EM images.

DATA is a folder with one sub-folder of MRC files per class (``maps/<class>/*.mrcs``) or
a RELION STAR file whose ``--label-column`` holds the class. Options left out keep the
value of ``--config`` (a TOML file), else the defaults of
:class:`biocnn.tasks.train.CryoTrainConfig`.

Examples
--------
    biocnn train maps/
    biocnn train --resume runs/train-20261205-101500      # after Ctrl-C, SIGTERM or a kill
    biocnn train --star particles.star --label-column rlnClassNumber --box 96 --epochs 30
    biocnn train maps/ --config configs/cryo_train.toml --model invariant \\
        --model-kwargs '{"widths": [32, 64, 128]}' --out runs/small
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console, data_source, err_console, timestamp

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


def train(
    data: Path = typer.Argument(None, show_default=False,
                                help="Folder of class folders, or a STAR file."),
    star: Path = typer.Option(None, help="STAR file of labelled particles (instead of DATA)."),
    label_column: str = typer.Option(None, help="STAR column with the class "
                                     "(default: rlnClassNumber)."),
    apix: float = typer.Option(None, help="Pixel size in Å of the input images, over their "
                               "headers and the STAR file (default: read from them)."),
    box: int = typer.Option(None, help="Box in px (default: the largest input image)."),
    target_apix: float = typer.Option(None, help="The model's pixel size in Å (default: "
                                      "coarsest that fits the box; 0 = ignore pixel sizes)."),
    mask_radius: float = typer.Option(None, help="Background mask radius: < 1 fraction of the "
                                      "box, else px (default: 0.4)."),
    invert: bool = typer.Option(None, "--invert/--no-invert", help="Invert the contrast."),
    lowpass: float = typer.Option(None, help="Low-pass: <= 1 fraction of Nyquist, > 1 Å "
                                  "(default: 0 = off)."),
    slice_axis: str = typer.Option(None, help="Volumes: z, y or x (default: z)."),
    slices: str = typer.Option(None, help="Volumes: central, all, none or a count "
                               "(default: central)."),
    project: bool = typer.Option(None, "--project/--no-project",
                                 help="Volumes: also use the projection along the axis."),
    model: str = typer.Option(None, help="Registered model (default: invariant_m)."),
    model_kwargs: str = typer.Option(None, help="JSON object of model options over the "
                                     "defaults (invariant_m: '{\"widths\": [16, 32, 64, 128]}'; "
                                     "registered widths: [32, 64, 128, 256])."),
    val_fraction: float = typer.Option(None, help="Validation fraction per class "
                                       "(default: 0.15)."),
    balance_classes: bool = typer.Option(None, "--balance-classes/--no-balance-classes",
                                         help="Sample every class equally often."),
    augment: bool = typer.Option(None, "--augment/--no-augment",
                                 help="Random shift, rotation and flips (default: on)."),
    max_shift: float = typer.Option(None, help="Largest training shift in px "
                                    "(default: 8% of the box)."),
    epochs: int = typer.Option(None, help="Epochs (default: 15)."),
    patience: int = typer.Option(None, help="Stop after this many epochs without a better "
                                 "validation accuracy (default: 5; 0 = off)."),
    batch_size: int = typer.Option(None, help="Batch size (default: 64)."),
    lr: float = typer.Option(None, help="Peak learning rate (default: 2e-3)."),
    seed: int = typer.Option(None, help="Random seed (default: 0)."),
    device: str = typer.Option(None, help="auto | cpu | cuda (default: auto)."),
    num_workers: int = typer.Option(None, help="DataLoader worker processes (default: 0)."),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="bf16 mixed precision."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    config: Path = typer.Option(None, help="TOML config, e.g. configs/cryo_train.toml."),
    out: Path = typer.Option(None, help="Run folder (default: runs/train-<timestamp>)."),
    resume: Path = typer.Option(None, help="Continue the interrupted run in this folder "
                                "(its saved config is used)."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a classifier; write checkpoints, metrics, curves, confusion matrix and run.json."""
    with cli_errors({"apix": "--target-apix"}):
        from biocnn.config import resolve
        from biocnn.engine import TrainingInterrupted
        from biocnn.tasks.train import CryoTrainConfig, run_train, train_tables

        cli = {
            "data": data_source(data, star), "label_column": label_column,
            "box": box, "apix": target_apix, "input_apix": apix,
            "resume": str(resume) if resume is not None else None,
            "mask_radius": mask_radius, "invert": invert,
            "lowpass": lowpass, "slice_axis": slice_axis, "slices": slices, "project": project,
            "model": model, "model_kwargs": parse_model_kwargs(model_kwargs),
            "val_fraction": val_fraction, "balance_classes": balance_classes, "augment": augment,
            "max_shift": max_shift, "epochs": epochs, "patience": patience,
            "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
            "num_workers": num_workers, "amp": amp, "compile": compile,
            "out": str(out) if out is not None else None, "progress": progress,
        }
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
        files = ", ".join(sorted(p.name for p in result.out_dir.iterdir()))
        console.print(f"wrote {result.out_dir}/: {files}")


def register(app: typer.Typer) -> None:
    """Attach ``biocnn train`` to the main app."""
    app.command("train")(train)
