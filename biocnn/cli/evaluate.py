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
from typing import Any

import typer

from biocnn.cli.common import (
    add_config_options,
    cli_errors,
    console,
    data_source,
    err_console,
    timestamp,
)
from biocnn.config import EvaluateConfig, describe

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
    data: Path = typer.Argument(None, show_default=False, help=describe(EvaluateConfig, "data")),
    star: Path = typer.Option(None, help="STAR file of labelled particles (instead of DATA)."),
    config: Path = typer.Option(None, help="TOML config with these options."),
    json_out: bool = typer.Option(False, "--json", help="Print evaluation.json on stdout."),
    **options: Any,
) -> None:
    """Evaluate a checkpoint; write evaluation.json, confusion.png, shift_accuracy.png, run.json."""
    with cli_errors(flags={"data": "DATA"}):
        from biocnn.config import resolve
        from biocnn.report import evaluate_tables
        from biocnn.tasks.evaluate import run_evaluate

        cli = {**options, "data": data_source(data, star), "shifts": parse_shifts(options["shifts"]),
               "angles": parse_shifts(options["angles"], "--angles")}
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


add_config_options(evaluate, EvaluateConfig, skip=("data",), aliases={"model": "-m"})


def register(app: typer.Typer) -> None:
    """Attach ``biocnn evaluate`` to the main app."""
    app.command("evaluate")(evaluate)
