"""The one exception type that the CLI turns into a clean one-line error."""

from __future__ import annotations

__all__ = ["BiocnnError"]


class BiocnnError(Exception):
    """An error caused by user input (bad file, bad option), reported without a traceback.

    The message should name the offending file or option and fit on one line.
    """
