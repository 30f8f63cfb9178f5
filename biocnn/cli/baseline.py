"""``biocnn baseline mnist``: the LeNet corner failure and its cure, measured side by side.

Trains the seed LeNet (fully connected head), LeNet with random-shift augmentation, a
global-pooled net with zero padding and max-pool, and the exactly shift-invariant core
on centred MNIST; tests them on digits moved to every corner and every valid placement.
``--transform rotate`` tests rotated digits instead (right angles and flips, a curve of
angles, two random angles); ``both`` measures shifts and rotations.

Example
-------
    biocnn baseline mnist --shift corners
    biocnn baseline mnist --transform rotate --models invariant,invariant_d4,gap_zero_pad
    biocnn baseline mnist --limit 6000 --epochs 1 --models lenet_fc,invariant --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console, err_console, timestamp

__all__ = ["register", "mnist"]

baseline_app = typer.Typer(help="Reproduce the LeNet corner-shift failure and its cure.",
                           no_args_is_help=True)


@baseline_app.command("mnist")
def mnist(
    shift: str = typer.Option(None, help="Test placements: corners | all | random | none. "
                              "The shift view always includes centred, corners and all-shift "
                              "metrics."),
    transform: str = typer.Option(None, help="Test views: shift | rotate | both (default: shift). "
                                  "rotate: D4 rotations/flips, accuracy vs angle, random-angle "
                                  "consistency; writes rotation.png."),
    models: str = typer.Option(None, help="Comma-separated experiment models or any registered "
                               "model, e.g. invariant_d4 "
                               "(default: lenet_fc,lenet_fc_aug,gap_zero_pad,invariant)."),
    epochs: int = typer.Option(None, help="Training epochs per model (default: 2)."),
    augment: bool = typer.Option(None, "--augment/--no-augment",
                                 help="Train every model with random placements "
                                 "(default: only the *_aug models)."),
    limit: int = typer.Option(None, help="Use the first N training digits (and N/6 test digits)."),
    all_shift_limit: int = typer.Option(None, help="Test digits evaluated at every placement "
                                        "(default: 500; 0 = all)."),
    rotation_limit: int = typer.Option(None, help="Test digits for the angle curve and random angles; "
                                       "digits that would not stay whole are skipped "
                                       "(default: 1000; 0 = all)."),
    rotation_step: int = typer.Option(None, help="Degrees between the curve's angles 0..180 "
                                      "(default: 15)."),
    canvas: int = typer.Option(None, help="Frame size N x N for the shifted digits (default: 28)."),
    batch_size: int = typer.Option(None, help="Training batch size (default: 128)."),
    lr: float = typer.Option(None, help="Peak learning rate (default: 3e-3)."),
    seed: int = typer.Option(None, help="Random seed (default: 0)."),
    device: str = typer.Option(None, help="auto | cpu | cuda (default: auto)."),
    data_dir: Path = typer.Option(None, help="Folder with the 4 MNIST IDX files (.gz or raw) "
                                  "instead of the bundled copy."),
    config: Path = typer.Option(None, help="TOML config, e.g. configs/mnist_corners.toml."),
    out: Path = typer.Option(None, help="Output folder (default: runs/mnist-<timestamp>)."),
    json_out: bool = typer.Option(False, "--json", help="Print results JSON to stdout."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train on centred MNIST, test on shifted or rotated digits; write results.json, figures, checkpoints."""
    with cli_errors():
        from biocnn.atomic import atomic_dir, write_json
        from biocnn.config import resolve, run_metadata, to_plain
        from mnist_baseline.experiment import BaselineConfig, run_experiment
        from mnist_baseline.report import (
            angle_table,
            plot_report,
            plot_rotation,
            results_table,
            rotation_table,
        )

        cli = {
            "shift": shift, "transform": transform, "rotation_limit": rotation_limit,
            "rotation_step": rotation_step, "epochs": epochs, "augment": augment, "limit": limit,
            "all_shift_limit": all_shift_limit, "canvas": canvas, "batch_size": batch_size,
            "lr": lr, "seed": seed, "device": device, "progress": progress,
            "data_dir": str(data_dir) if data_dir else None,
            "models": tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        }
        cfg = resolve(BaselineConfig(), config, cli, "baseline")
        out = out or Path("runs") / f"mnist-{timestamp()}"
        log_console = err_console if json_out else console
        with atomic_dir(out) as tmp:
            results, examples = run_experiment(cfg, tmp, log=log_console.print)
            write_json(tmp / "results.json", results)
            write_json(tmp / "run.json", run_metadata(to_plain(cfg)))
            figures = []
            if "digits" in examples:
                plot_report(results, examples["digits"], examples["predictions"], examples["labels"],
                            tmp / "report.png")
                figures.append("report.png")
            if "rotation" in examples:
                rot = examples["rotation"]
                plot_rotation(results, rot["digits"], rot["predictions"], rot["labels"],
                              tmp / "rotation.png")
                figures.append("rotation.png")
        if "digits" in examples:
            log_console.print(results_table(results))
        if "rotation" in examples:
            log_console.print(rotation_table(results))
            log_console.print(angle_table(results))
        log_console.print(f"wrote {out}/results.json, {', '.join(figures)}, run.json and checkpoints")
        if json_out:
            typer.echo(json.dumps(results, indent=2))


def register(app: typer.Typer) -> None:
    """Attach ``biocnn baseline ...`` to the main app."""
    app.add_typer(baseline_app, name="baseline")
