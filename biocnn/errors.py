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
    the CLI shows the flag that sets it (:func:`biocnn.cli.common.cli_errors`)."""

    def __init__(self, field: str, value: Any, why: str) -> None:
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field} {value}: {why}")

    def as_flag(self, flags: dict[str, str] | None = None) -> str:
        """The message with the field shown as its command-line flag."""
        flag = (flags or {}).get(self.field, "--" + self.field.replace("_", "-"))
        return f"{flag} {self.value}: {self.why}"
