"""check_outputs: requested outputs checked before any work, errors naming config fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from biocnn.atomic import check_outputs
from biocnn.errors import OptionError


def test_outputs_are_returned_by_field_and_unset_ones_skipped(tmp_path: Path) -> None:
    got = check_outputs({"csv": tmp_path / "a.csv", "star": None, "cam": "",
                         "out_stack": (tmp_path / "s.mrcs", tmp_path / "s.star")})
    assert got == {"csv": tmp_path / "a.csv", "out_stack": tmp_path / "s.mrcs"}
    assert not list(tmp_path.iterdir())  # nothing created


def test_an_existing_output_names_its_field_and_the_overwrite_field(tmp_path: Path) -> None:
    (tmp_path / "s.star").write_text("x")
    outputs = {"out_stack": (tmp_path / "s.mrcs", tmp_path / "s.star")}  # the file beside it exists
    with pytest.raises(OptionError) as info:
        check_outputs(outputs)
    assert (info.value.field, info.value.fix) == ("out_stack", "overwrite")
    assert str(info.value) == f"out_stack {tmp_path / 's.star'}: exists (use overwrite)"
    assert info.value.as_flag() == f"--out-stack {tmp_path / 's.star'}: exists (use --overwrite)"
    assert check_outputs(outputs, overwrite=True)["out_stack"] == tmp_path / "s.mrcs"


@pytest.mark.parametrize("case", ["input", "twice", "folder", "parent_file"])
def test_outputs_that_cannot_be_written_name_their_field(tmp_path: Path, case: str) -> None:
    src = tmp_path / "in.mrcs"
    src.write_text("x")
    outputs, why = {
        "input": ({"csv": src}, "is one of the inputs"),
        "twice": ({"csv": tmp_path / "p.txt", "star": tmp_path / "p.txt"}, "is also the csv output"),
        "folder": ({"cam": tmp_path}, "is a directory"),
        "parent_file": ({"cam": src / "g.png"}, "is not a directory"),
    }[case]
    with pytest.raises(OptionError, match=why) as info:
        check_outputs(outputs, inputs=[src], overwrite=True)
    assert info.value.field == list(outputs)[-1]
