"""Pieces shared by every CLI command: error reporting, run metadata, console."""

from __future__ import annotations

import contextlib
import platform
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from biocnn.errors import BiocnnError

__all__ = ["console", "err_console", "cli_errors", "run_metadata", "timestamp"]

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn user-input errors into one line on stderr and exit code 1 (no traceback).

    ``BiocnnError`` is the project's own input error; ``OSError`` covers unreadable
    paths. Anything else is a bug and keeps its traceback.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    except BiocnnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        err_console.print(
            f"[bold red]error:[/]{where} {exc.strerror or exc}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


def timestamp() -> str:
    """Local time as ``YYYYmmdd-HHMMSS`` for default run directory names."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def run_metadata(config: Any = None) -> dict[str, Any]:
    """What every run saves beside its outputs: version, command line, resolved config."""
    import dataclasses

    import torch

    from biocnn import __version__

    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {
        "biocnn_version": __version__,
        "command": sys.argv,
        "time": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "config": cfg,
    }
