"""``biocnn select``: keep the good 2D class averages (RELION, cryoSPARC or an MRC stack).

Examples
--------
    biocnn select Class2D/job010/ --model best.pt --out Select/biocnn/
    biocnn select Class2D/job010/run_it025_model.star --model best.pt --out sel --threshold 0.7
    biocnn select J12_020_class_averages.cs --cs-project /cryosparc/P3 --model best.pt --out sel
    biocnn select classes.mrcs --model best.pt --out sel --good-class protein
"""

from __future__ import annotations

from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console

__all__ = ["select", "register"]


def select(
    inputs: list[str] = typer.Argument(..., show_default=False,
                                       help="RELION 2D job folder or its run_itNNN_model.star, a "
                                       "cryoSPARC class-averages .cs, or MRC stacks of class "
                                       "averages."),
    model: Path = typer.Option(None, "--model", "-m", help="Checkpoint from `biocnn train` with a "
                               "good/junk pair of classes (default: the selector shipped with biocnn)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (good.mrcs, bad.mrcs, "
                             "classes.csv, selection.json, particles.star, report.html)."),
    threshold: float = typer.Option(None, help="Keep classes with P(good) >= this (default: the "
                                    "checkpoint's, else 0.5)."),
    good_class: str = typer.Option("good", help="Name of the model's good class."),
    apix: float = typer.Option(None, help="Pixel size in Å of the class averages (instead of "
                               "the header / model.star value)."),
    cs_project: Path = typer.Option(None, help="cryoSPARC project folder of .cs blob paths."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="Replace an existing output folder."),
    batch_size: int = typer.Option(256, help="Batch size."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Score every class average with P(good) and write the kept / rejected classes."""
    with cli_errors():
        from biocnn.tasks.select import SelectConfig, run_select

        cfg = SelectConfig(
            inputs=tuple(inputs), model="" if model is None else str(model),
            out="" if out is None else str(out), threshold=threshold, good_class=good_class,
            apix=apix, cs_project=None if cs_project is None else str(cs_project),
            overwrite=overwrite, batch_size=batch_size, device=device)
        result = run_select(cfg, log=console.print)
        kept = int(result.selected.sum())
        particles = "" if result.particles_kept is None else \
            f", {result.particles_kept:,} of {int(result.counts.sum()):,} particles"
        console.print(f"kept {kept} of {len(result.scores)} classes (P(good) >= "
                      f"{result.threshold:g}){particles}")
        for path in result.written:
            console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Attach ``biocnn select`` to the main app."""
    app.command("select")(select)
