"""``biocnn evaluate``: accuracy, per-class metrics and shift robustness on labelled images.

Examples
--------
    biocnn evaluate maps/ --model runs/train-x/best.pt
    biocnn evaluate particles.star --model best.pt --label-column rlnClassNumber --tta
    biocnn evaluate maps/ --model best.pt --shifts 0,4,8,16,24 --out runs/eval --json
    biocnn evaluate particles.star --model best.pt --apix 1.06 --out runs/eval --overwrite
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console, data_source, err_console, timestamp

__all__ = ["evaluate", "register", "parse_shifts"]


def parse_shifts(text: str | None, option: str = "--shifts") -> tuple[float, ...] | None:
    """``--shifts 0,2,4.5`` → ``(0.0, 2.0, 4.5)`` (None stays None)."""
    from biocnn.errors import BiocnnError

    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        example = "0,30,90" if option == "--angles" else "0,2,4,8"
        raise BiocnnError(f"{option} {text!r}: use comma-separated numbers, e.g. {example}") from None


def evaluate(
    data: Path = typer.Argument(None, show_default=False,
                                help="Folder of class folders, or a STAR file."),
    model: Path = typer.Option(None, "--model", "-m", help="Checkpoint from `biocnn train`."),
    star: Path = typer.Option(None, help="STAR file of labelled particles (instead of DATA)."),
    label_column: str = typer.Option(None, help="STAR column with the class "
                                     "(default: rlnClassNumber)."),
    shifts: str = typer.Option(None, help="Shift lengths in px, e.g. 0,2,4,8 "
                               "(default: 0, 2, 4, ... up to box/4)."),
    consistency_shift: int = typer.Option(None, help="Largest shift of the consistency test "
                                          "in px (default: 8% of the box)."),
    angles: str = typer.Option(None, help="Rotation angles in degrees, e.g. 0,45,90 "
                               "(default: 0,30,...,180)."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Average over the 8 rotations/flips."),
    apix: float = typer.Option(None, help="Pixel size in Å of every image (instead of the "
                               "STAR/header value)."),
    volume: bool = typer.Option(None, "--volume/--stack", help="Read 3D MRC files as volumes / "
                                "as image stacks (default: from the header and name)."),
    overwrite: bool = typer.Option(None, "--overwrite/--no-overwrite",
                                   help="Replace a non-empty --out folder."),
    batch_size: int = typer.Option(None, help="Batch size (default: 256)."),
    device: str = typer.Option(None, help="auto | cpu | cuda (default: auto)."),
    num_workers: int = typer.Option(None, help="DataLoader worker processes (default: 0)."),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="bf16 mixed precision."),
    seed: int = typer.Option(None, help="Seed of the random shift directions (default: 0)."),
    config: Path = typer.Option(None, help="TOML config with these options."),
    out: Path = typer.Option(None, help="Output folder (default: runs/evaluate-<timestamp>)."),
    json_out: bool = typer.Option(False, "--json", help="Print evaluation.json on stdout."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Evaluate a checkpoint; write evaluation.json, confusion.png, shift_accuracy.png, run.json."""
    with cli_errors():
        from biocnn.config import resolve
        from biocnn.report import evaluate_tables
        from biocnn.tasks.evaluate import EvaluateConfig, run_evaluate

        cli = {
            "data": data_source(data, star),
            "model": str(model) if model is not None else None, "label_column": label_column,
            "shifts": parse_shifts(shifts), "consistency_shift": consistency_shift, "tta": tta,
            "angles": parse_shifts(angles, "--angles"),
            "apix": apix, "as_volume": volume, "overwrite": overwrite,
            "batch_size": batch_size, "device": device, "num_workers": num_workers, "amp": amp,
            "seed": seed, "out": str(out) if out is not None else None, "progress": progress,
        }
        cfg = resolve(EvaluateConfig(), config, cli)
        if not cfg.out:
            cfg.out = str(Path("runs") / f"evaluate-{timestamp()}")
        log = err_console if json_out else console
        result = run_evaluate(cfg, log=log.print)
        for table in evaluate_tables(result.report):
            log.print(table)
        log.print(f"wrote {result.out_dir}/evaluation.json, confusion.png, shift_accuracy.png, "
                  "run.json")
        if json_out:
            typer.echo(json.dumps(result.report, indent=2))


def register(app: typer.Typer) -> None:
    """Attach ``biocnn evaluate`` to the main app."""
    app.command("evaluate")(evaluate)
