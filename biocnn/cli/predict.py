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

import typer

from biocnn.cli.common import cli_errors, console, err_console

__all__ = ["predict", "register"]


def predict(
    inputs: list[str] = typer.Argument(..., show_default=False,
                                       help="MRC files, folders, globs, STAR or cryoSPARC .cs "
                                       "files."),
    model: Path = typer.Option(None, "--model", "-m", help="Checkpoint from `biocnn train` "
                               "(best.pt)."),
    csv: Path = typer.Option(None, help="Write one row per image: index, image, predicted, "
                             "p_<class>..."),
    star: Path = typer.Option(None, help="Write a RELION 3.1+ STAR file: the input rows, a full "
                              "optics table (unknown voltage/Cs/amplitude contrast: 300 kV/2.7 mm/"
                              "0.1) and the predictions in new biocnn* columns."),
    relion_project: Path = typer.Option(None, help="RELION project folder; STAR image names are "
                                        "relative to it (default: the current folder)."),
    select: str = typer.Option(None, help="Class (name or 1-based number) for --out-stack / "
                               "--out-cs."),
    min_probability: float = typer.Option(None, help="--select: keep images at least this sure "
                                          "(default: 0)."),
    out_stack: Path = typer.Option(None, help="Write the original images of --select as an "
                                   "MRC stack, and their STAR rows beside it (.star)."),
    out_cs: Path = typer.Option(None, help="Write the --select rows of a .cs input as a .cs file "
                                "cryoSPARC can import."),
    cs_project: Path = typer.Option(None, help="cryoSPARC project folder that .cs blob/path "
                                    "values are relative to."),
    apix: float = typer.Option(None, help="Pixel size in Å of every input image (instead of the "
                               "STAR/.cs/header value)."),
    volume: bool = typer.Option(None, "--volume/--stack", help="Read 3D MRC files as volumes / "
                                "as image stacks (default: from the header and name)."),
    overwrite: bool = typer.Option(None, "--overwrite/--no-overwrite",
                                   help="Replace existing output files."),
    cam: Path = typer.Option(None, help="Write a gallery of class-activation maps (PNG)."),
    cam_count: int = typer.Option(None, help="Images in the --cam gallery (default: 16)."),
    tta: bool = typer.Option(None, "--tta/--no-tta", help="Average over the 8 rotations/flips."),
    slice_axis: str = typer.Option(None, help="Volumes: z, y or x (default: as in training)."),
    slices: str = typer.Option(None, help="Volumes: central, all, none or a count "
                               "(default: as in training)."),
    project: bool = typer.Option(None, "--project/--no-project",
                                 help="Volumes: also the projection (default: as in training)."),
    batch_size: int = typer.Option(None, help="Batch size (default: 256)."),
    device: str = typer.Option(None, help="auto | cpu | cuda (default: auto)."),
    num_workers: int = typer.Option(None, help="DataLoader worker processes (default: 0)."),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="bf16 mixed precision."),
    config: Path = typer.Option(None, help="TOML config with these options."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Predict the class of every image; print a table (or JSON) and write the outputs asked for."""
    with cli_errors():
        from biocnn.config import resolve
        from biocnn.report import prediction_json, prediction_tables
        from biocnn.tasks.predict import PredictConfig, run_predict

        def path(p: Path | None) -> str | None:
            return None if p is None else str(p)

        cli = {
            "inputs": tuple(inputs), "model": path(model), "csv": path(csv), "star": path(star),
            "select": select, "min_probability": min_probability, "out_stack": path(out_stack),
            "out_cs": path(out_cs), "cs_project": path(cs_project),
            "relion_project": path(relion_project), "apix": apix, "as_volume": volume,
            "overwrite": overwrite,
            "cam": path(cam), "cam_count": cam_count, "tta": tta, "slice_axis": slice_axis,
            "slices": slices, "project": project, "batch_size": batch_size, "device": device,
            "num_workers": num_workers, "amp": amp, "progress": progress,
        }
        cfg = resolve(PredictConfig(), config, cli)
        log = err_console if json_out else console
        result = run_predict(cfg, log=log.print)
        for table in prediction_tables(result):
            log.print(table)
        for written in result.written:
            log.print(f"wrote {written}")
        if json_out:
            typer.echo(json.dumps(prediction_json(result), indent=2))


def register(app: typer.Typer) -> None:
    """Attach ``biocnn predict`` to the main app."""
    app.command("predict")(predict)
