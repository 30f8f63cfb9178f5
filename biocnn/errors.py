"""The exceptions that the CLI turns into clean one-line errors."""

from __future__ import annotations

from typing import Any

__all__ = ["BiocnnError", "OptionError"]


class BiocnnError(Exception):
    """An error caused by user input (bad file, bad option), reported without a traceback.

    The message should name the offending file or option and fit on one line.
    """


class OptionError(BiocnnError):
    """A bad value of a config field: ``field value: why``. The library names the field;
    the CLI shows the flag that sets it (:func:`biocnn.cli.common.cli_errors`).

    ``value`` None leaves the value out (a missing option); ``fix`` names another field
    whose setting resolves the error (``... (use overwrite)``), shown as its flag too.
    """

    def __init__(self, field: str, value: Any, why: str, *, fix: str | None = None) -> None:
        self.field, self.value, self.why, self.fix = field, value, why, fix
        super().__init__(self._text(field, fix))

    def _text(self, name: str, fix: str | None) -> str:
        value = "" if self.value is None else f" {self.value}"
        return f"{name}{value}: {self.why}" + (f" (use {fix})" if fix else "")

    def as_flag(self, flags: dict[str, str] | None = None) -> str:
        """The message with the fields shown as their command-line flags."""
        def flag(field: str) -> str:
            return (flags or {}).get(field, "--" + field.replace("_", "-"))

        return self._text(flag(self.field), self.fix and flag(self.fix))
