"""``biocnn select``: keep the good 2D class averages (RELION, cryoSPARC or an MRC stack).

Examples
--------
    biocnn select Class2D/job010/ --model best.pt --out Select/biocnn/
    biocnn select Class2D/job010/run_it025_model.star --model best.pt --out sel --threshold 0.7
    biocnn select J12_020_class_averages.cs --cs-project /cryosparc/P3 --model best.pt --out sel
    biocnn select classes.mrcs --model best.pt --out sel --good-class protein
"""

from __future__ import annotations

from typing import Any

import typer

from biocnn.cli.common import add_config_options, cli_errors, console
from biocnn.config import SelectConfig, describe

__all__ = ["select", "register"]


def select(
    inputs: list[str] = typer.Argument(..., show_default=False,
                                       help=describe(SelectConfig, "inputs")),
    **options: Any,
) -> None:
    """Score every class average with P(good) and write the kept / rejected classes."""
    with cli_errors():
        from biocnn.config import merge
        from biocnn.tasks.select import run_select

        cfg = merge(SelectConfig(), {**options, "inputs": tuple(inputs)})
        result = run_select(cfg, log=console.print)
        kept = int(result.selected.sum())
        particles = "" if result.particles_kept is None else \
            f", {result.particles_kept:,} of {int(result.counts.sum()):,} particles"
        console.print(f"kept {kept} of {len(result.scores)} classes (P(good) >= "
                      f"{result.threshold:g}){particles}")
        for path in result.written:
            console.print(f"wrote {path}")


# no --progress: scoring a few hundred class averages takes seconds
add_config_options(select, SelectConfig, skip=("inputs", "progress"),
                   aliases={"model": "-m", "out": "-o"})


def register(app: typer.Typer) -> None:
    """Attach ``biocnn select`` to the main app."""
    app.command("select")(select)
