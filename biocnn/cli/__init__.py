"""The ``biocnn`` command line: one module per sub-command.

Examples
--------
    biocnn baseline mnist --shift corners
    biocnn simulate --demo maps/
    biocnn train maps/
    biocnn predict slice.mrc --model runs/train-.../best.pt
    biocnn evaluate maps/ --model runs/train-.../best.pt
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
_COMMANDS = ("baseline", "simulate", "train", "predict", "evaluate")
for _name in _COMMANDS:
    try:
        _mod = importlib.import_module(f"biocnn.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command still being written
        if _exc.name != f"biocnn.cli.{_name}":
            raise
        continue
    _mod.register(app)


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
