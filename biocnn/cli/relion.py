"""``biocnn relion predict``: biocnn as a RELION External job (RELION 3.1, 4 and 5).

In the RELION GUI, make an **External** job with the executable ``biocnn relion predict``,
the input particles on the Input tab, and the parameters ``model`` (the checkpoint) and
optionally ``select`` (a class), ``min_probability``, ``tta``, ``apix``, ``device``. RELION
runs it from the project folder as::

    biocnn relion predict --o External/job012/ --in_parts Extract/job005/particles.star \\
        --j 4 --model /models/best.pt [--select good]

It writes into the job folder ``particles.star`` (every particle, predictions in new
``biocnn*`` columns) and ``particles_<class>.star`` per selected class (default: every
class with particles), each a RELION 3.1+ particle file with complete optics and image
names relative to the project folder; lists them in ``RELION_OUTPUT_NODES.star`` (node
type particles), and creates ``RELION_JOB_EXIT_SUCCESS``, or ``RELION_JOB_EXIT_FAILURE``
after a one-line error.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import typer

from biocnn.cli.common import cli_errors, console

__all__ = ["relion_app", "relion_predict", "register"]

relion_app = typer.Typer(
    help="Run biocnn inside a RELION project (External job type).", no_args_is_help=True,
)


def class_star_name(name: str) -> str:
    """``particles_<class>.star`` with non-word characters of the class name as ``_``."""
    return f"particles_{re.sub(r'[^0-9A-Za-z_.-]', '_', name)}.star"


#: PredictConfig fields whose RELION parameter is not ``--field-name``.
_FLAGS = {"inputs": "--in_parts", "batch_size": "--batch_size", "min_probability": "--min_probability",
          "o": "--o"}


@relion_app.command("predict")
def relion_predict(
    o: Path = typer.Option(..., "--o", help="Job folder RELION gives (External/jobNNN/)."),
    in_parts: Path = typer.Option(..., "--in_parts", "--in-parts",
                                  help="Input particles STAR file (relative to the project)."),
    j: int = typer.Option(1, "--j", help="CPU threads."),
    model: Path = typer.Option(..., "--model", help="Checkpoint from `biocnn train`."),
    select: list[str] = typer.Option(None, "--select", help="Class (name or 1-based number) to "
                                     "write particles_<class>.star for; repeatable (default: "
                                     "every class)."),
    min_probability: float = typer.Option(0.0, "--min_probability", "--min-probability",
                                          help="Per-class STARs keep particles at least this sure."),
    tta: str = typer.Option("no", "--tta", help="yes: average over the 8 rotations/flips "
                            "(RELION passes every parameter with a value)."),
    apix: float = typer.Option(None, "--apix", help="Pixel size in Å instead of the STAR's."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(256, "--batch_size", "--batch-size", help="Batch size."),
    pipeline_control: str = typer.Option(None, "--pipeline_control", hidden=True,
                                         help="Passed by RELION's scheduler; not used."),
) -> None:
    """Predict every particle of --in_parts; write particles.star, one STAR per selected class,
    RELION_OUTPUT_NODES.star and the RELION_JOB_EXIT_* marker into --o."""
    del pipeline_control
    job = Path(o)
    ok = False
    for stale in ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE"):  # a re-run's old marker
        with contextlib.suppress(OSError):
            (job / stale).unlink(missing_ok=True)
    try:
        with cli_errors(flags=_FLAGS):
            _run(job, in_parts, j, model, select or [], min_probability, _yes(tta), apix, device,
                 batch_size)
        ok = True
    finally:
        with contextlib.suppress(OSError):
            from biocnn.io.relion import mark_exit

            mark_exit(job, ok)


def _yes(value: str) -> bool:
    """A RELION yes/no parameter value as a bool."""
    from biocnn.errors import BiocnnError

    v = value.strip().lower()
    if v in ("yes", "y", "true", "1", "on"):
        return True
    if v in ("no", "n", "false", "0", "off", ""):
        return False
    raise BiocnnError(f"--tta {value!r}: use yes or no")


def _run(job: Path, in_parts: Path, threads: int, model: Path, select: list[str],
         min_probability: float, tta: bool, apix: float | None, device: str,
         batch_size: int) -> None:
    """The job: predict, then write the STAR files and the output nodes."""
    import warnings

    import numpy as np
    import torch

    from biocnn.atomic import check_outputs
    from biocnn.checkpoint import read_checkpoint
    from biocnn.errors import BiocnnError
    from biocnn.io.relion import write_output_nodes
    from biocnn.io.star import write_star
    from biocnn.report import prediction_tables
    from biocnn.tasks.predict import PredictConfig, class_index, relion_tables, run_predict

    if threads < 1:
        raise BiocnnError(f"--j {threads}: must be >= 1")
    names = list(read_checkpoint(model).get("class_names") or [])
    wanted = [class_index(s, names) for s in select] or list(range(len(names)))  # before any work
    torch.set_num_threads(threads)
    cfg = PredictConfig(inputs=(str(in_parts),), model=str(model), tta=tta, apix=apix,
                        device=device, batch_size=batch_size, progress=False)
    result = run_predict(cfg, log=console.print)
    names = result.class_names
    all_star = job / "particles.star"
    class_stars = {c: job / class_star_name(names[c]) for c in wanted}
    # re-running a job replaces its own outputs; inputs are still protected
    check_outputs({"o": (all_star, *class_stars.values())},
                  inputs=[model, *result.inputs.files()], overwrite=True)
    particles, optics = relion_tables(result)
    stars = [write_star(all_star, particles, optics)]
    probs = result.probabilities
    for c, path in class_stars.items():
        rows = np.flatnonzero((result.predicted == c) & (probs[:, c] >= min_probability))
        if not len(rows):
            warnings.warn(f"no particle predicted as {names[c]!r}: {path.name} not written",
                          stacklevel=2)
            continue
        stars.append(write_star(path, particles.iloc[rows].reset_index(drop=True), optics))
    write_output_nodes(job, stars)
    for table in prediction_tables(result):
        console.print(table)
    for path in stars:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Attach ``biocnn relion ...`` to the main app."""
    app.add_typer(relion_app, name="relion")
