"""Pieces shared by every CLI command: error reporting, run metadata, console."""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from biocnn.errors import BiocnnError, OptionError
from biocnn.runtime import is_main_process

__all__ = ["console", "err_console", "cli_errors", "timestamp", "data_source", "config_options",
           "add_config_options", "FLAGS"]

# under torchrun only rank 0 talks; errors are printed by every rank
# wide tables stay readable when output goes to a file or a pipe
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(quiet=not is_main_process(), width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def _one_line(message: str) -> str:
    """The user-facing line of an error message.

    An error raised in a DataLoader worker comes back wrapped in the worker's traceback
    ("Caught BiocnnError in DataLoader worker ... biocnn.errors.BiocnnError: <msg>"); keep
    only the original message.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return message
    if len(lines) > 1 and "Traceback" in message:
        return re.sub(r"^[\w.]*Error: ", "", lines[-1].strip())
    return " ".join(line.strip() for line in lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err_console.print(f"[yellow]warning:[/] {_one_line(str(message))}", highlight=False,
                      soft_wrap=True)


#: Config fields whose flag is not ``--field-name`` (a command may add its own).
FLAGS = {"input_apix": "--apix", "as_volume": "--volume/--stack"}


@contextlib.contextmanager
def cli_errors(flags: dict[str, str] | None = None) -> Iterator[None]:
    """Turn user-input errors into one line on stderr and exit code 1 (no traceback).

    An :class:`~biocnn.errors.OptionError` names the config field; it is shown as the
    flag that sets it (``--field-name``, or as ``flags``/:data:`FLAGS` say).

    ``BiocnnError`` is the project's own input error; ``OSError`` covers unreadable
    paths. Anything else is a bug and keeps its traceback. Warnings print as one
    ``warning: ...`` line each.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            yield
    except BiocnnError as exc:
        text = exc.as_flag({**FLAGS, **(flags or {})}) if isinstance(exc, OptionError) else str(exc)
        err_console.print(f"[bold red]error:[/] {_one_line(text)}", highlight=False,
                          soft_wrap=True)
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


def data_source(data: object | None, star: object | None) -> str | None:
    """The labelled data a command reads: a DATA folder or ``--star FILE``, not both."""
    if data is not None and star is not None:
        raise BiocnnError("give DATA or --star, not both")
    source = star if star is not None else data
    return str(source) if source is not None else None


def _cli_type(hint: Any) -> type:
    """The click-friendly type of a config field's type hint (``X | None`` -> X, dict -> JSON str)."""
    if type(None) in typing.get_args(hint):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint) or hint
    return {dict: str, list: str, tuple: str}.get(origin, origin)


def config_options(cls: type, *, skip: Iterable[str] = (), flags: dict[str, str] | None = None,
                   aliases: dict[str, str] | None = None, required: Iterable[str] = ()
                   ) -> list[inspect.Parameter]:
    """Typer options for the fields of config dataclass ``cls``: help and default shown from
    the field (:func:`biocnn.config.option`), every value ``None`` unless given, so a
    ``--config`` file and the defaults fill the rest. Booleans get ``--x/--no-x``.

    ``flags`` renames fields' flags (over :data:`FLAGS`), ``aliases`` adds a short one
    (``{"model": "-m"}``); ``required`` fields must be given on the command line.
    """
    import dataclasses

    from biocnn.config import describe

    flags, aliases, required = {**FLAGS, **(flags or {})}, aliases or {}, set(required)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _cli_type(hints[f.name])
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        decls = [flag if "/" in flag else f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        decls += [aliases[f.name]] if f.name in aliases else []
        default = ... if f.name in required else None
        option = typer.Option(default, *decls, help=describe(cls, f.name), show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind))
    return params


def add_config_options(command: Callable[..., Any], cls: type, **kwargs: Any) -> None:
    """Give ``command`` one option per field of ``cls`` (:func:`config_options`, same
    ``kwargs``) after its own parameters; its ``**options`` receives them."""
    fixed = [p for p in inspect.signature(command).parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = inspect.Signature(fixed + config_options(cls, **kwargs))  # type: ignore[attr-defined]
