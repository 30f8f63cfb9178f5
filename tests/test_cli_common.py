"""CLI plumbing: one-line errors and warnings, --help and --version."""

from __future__ import annotations

import warnings

import pytest
import typer
from typer.testing import CliRunner

from biocnn import __version__
from biocnn.cli import app
from biocnn.cli.common import _cli_type, _one_line, cli_errors
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


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "select", "calibrate"])
def test_command_options_are_generated_from_the_config(command: str) -> None:
    import dataclasses

    from biocnn import config

    cls = {"train": config.CryoTrainConfig, "predict": config.PredictConfig,
           "evaluate": config.EvaluateConfig, "select": config.SelectConfig,
           "calibrate": config.CalibrateConfig}[command]
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    options = [f.name for f in dataclasses.fields(cls)
               if getattr(params.get(f.name), "param_type_name", "") == "option"]
    assert len(options) >= 5
    for name in options:  # help and shown default come from the field; unset flags stay None
        assert params[name].help == config.describe(cls, name)
        assert params[name].default is None or params[name].required
    if command in ("predict", "evaluate", "select"):
        assert params["model"].opts == ["--model", "-m"]
    if command == "calibrate":
        assert params["out"].required and not params["overwrite"].required


def test_cli_type_of_config_fields() -> None:
    from typing import Any

    assert _cli_type(tuple[float, ...]) is str  # typed as "0,2,4" and parsed by the command
    assert _cli_type(dict[str, Any]) is str  # a JSON object
    assert _cli_type(float | None) is float and _cli_type(bool | None) is bool
    assert _cli_type(str | int | None) is str and _cli_type(int) is int
