"""CLI plumbing: one-line errors and warnings, --help and --version."""

from __future__ import annotations

import warnings

import pytest
import typer
from typer.testing import CliRunner

from biocnn import __version__
from biocnn.cli import app
from biocnn.cli.common import _one_line, cli_errors
from biocnn.errors import BiocnnError


def test_worker_traceback_is_reduced_to_the_original_message() -> None:
    wrapped = ("Caught BiocnnError in DataLoader worker process 0.\nOriginal Traceback (most recent "
               "call last):\n  File \"x.py\", line 1\nbiocnn.errors.BiocnnError: a.mrc: NaN pixels")
    assert _one_line(wrapped) == "a.mrc: NaN pixels"
    assert _one_line("two\nlines") == "two lines"


def test_cli_errors_exit_1_and_warnings_are_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(typer.Exit) as info, cli_errors():
        warnings.warn("pixel size unknown\nin b.mrc", stacklevel=1)
        raise BiocnnError("bad.mrc: not an MRC file")
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: pixel size unknown in b.mrc", "error: bad.mrc: not an MRC file"]


def test_help_and_version() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("baseline", "simulate", "train", "predict", "evaluate"):
        assert command in result.stdout
    assert runner.invoke(app, ["--version"]).stdout.strip() == __version__


def test_option_errors_name_the_field_and_the_cli_shows_the_flag(
    capsys: pytest.CaptureFixture, tmp_path
) -> None:
    from biocnn.data import PreprocessConfig
    from biocnn.errors import OptionError

    with pytest.raises(OptionError, match=r"^mask_radius 0.0: must be > 0$"):
        PreprocessConfig(mask_radius=0.0)
    with pytest.raises(typer.Exit), cli_errors({"apix": "--target-apix"}):
        PreprocessConfig(apix=-1.0)
    assert capsys.readouterr().err.strip() == "error: --target-apix -1.0: must be >= 0 (0 = unknown)"
    missing = OptionError("out_stack", None, "exists", fix="overwrite")  # no value; a fixing flag
    assert str(missing) == "out_stack: exists (use overwrite)"
    assert missing.as_flag({"out_stack": "OUT"}) == "OUT: exists (use --overwrite)"
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--mask-radius", "-2"])
    assert result.exit_code == 1
    assert "--mask-radius -2.0: must be > 0" in result.output
