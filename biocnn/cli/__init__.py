"""The ``biocnn`` command line: one module per sub-command.

Examples
--------
    biocnn baseline mnist --shift corners
    biocnn simulate --demo maps/
    biocnn train maps/
    biocnn predict slice.mrc --model runs/train-.../best.pt
    biocnn evaluate maps/ --model runs/train-.../best.pt
    biocnn relion predict --o External/job012/ --in_parts particles.star --model best.pt
    biocnn select Class2D/job010/ --model best.pt --out Select/biocnn/
    biocnn export runs/train-.../best.pt --onnx model.onnx
"""

from __future__ import annotations

import importlib

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="biocnn",
    help="Translation-invariant CNNs for cryo-EM images, class averages, map slices and MNIST.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each sub-command module defines ``register(app)``; importing is cheap (torch is
# imported lazily inside the commands) so `biocnn --help` stays fast.
for _name in ("baseline", "simulate", "train", "predict", "evaluate", "relion", "select", "calibrate",
              "export"):
    importlib.import_module(f"biocnn.cli.{_name}").register(app)


def _print_version(value: bool) -> None:
    if value:
        from biocnn import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Translation-invariant CNNs for cryo-EM images, class averages, map slices and MNIST."""


def main() -> None:
    """Console-script entry point."""
    app()
