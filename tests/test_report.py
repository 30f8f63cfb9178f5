"""biocnn.report: tables, per-input aggregates, layout lines, probability column names."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from rich.console import Console

from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.data.inputs import open_inputs
from biocnn.io.mrc import write_mrc
from biocnn.io.writers import probability_columns
from biocnn.metrics import classification_summary
from biocnn.report import (
    class_table,
    evaluate_tables,
    input_aggregates,
    layout_lines,
    short_name,
)

PRE = PreprocessConfig(box=8, apix=1.0)


def _render(table) -> str:  # noqa: ANN001
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_probability_columns() -> None:
    assert probability_columns(["good", "bad junk", "2"]) == ["p_good", "p_bad_junk", "p_2"]
    assert probability_columns(["a b", "a-b"]) == ["p_1", "p_2"]  # collisions fall back


def test_short_name() -> None:
    assert short_name("000012@/a/b/stack.mrcs") == "000012@stack.mrcs"
    assert short_name("/a/b/map.mrc:z=3") == "map.mrc:z=3"


def test_class_and_evaluate_tables() -> None:
    s = classification_summary(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert class_table(s).row_count == 3
    report = {**s, "data": "maps/", "loss": 0.5, "tta": True, "class_names": ["a", "b", "c"],
              "shift_robustness": {"fill": "zeros", "shifts_px": [0.0, 4.0],
                                   "shifts_fraction_of_box": [0.0, 0.25], "accuracy": [0.75, 0.5],
                                   "worst_case": 0.5, "consistency": 0.9,
                                   "consistency_max_shift_px": 2}}
    per_class, confusion, shift = evaluate_tables(report)
    assert "maps/: 4 images, loss 0.5000, TTA" in _render(per_class)
    assert confusion.row_count == 3 and shift.row_count == 2
    assert "0.7500" in _render(shift) and "consistency" in _render(shift)


def test_layout_lines_and_aggregates(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrcs", np.zeros((3, 8, 8), np.float32), apix=1.0, is_stack=True)
    write_mrc(tmp_path / "one.mrc", np.zeros((8, 8), np.float32), apix=1.0)
    with mrcfile.new(tmp_path / "p.mrc") as mrc:  # particle-like, space group 1: a stack
        mrc.set_data(np.zeros((5, 8, 8), np.float32))
        mrc.header.ispg = 1
        mrc.voxel_size = 1.0
    files = [str(tmp_path / n) for n in ("a.mrcs", "one.mrc", "p.mrc")]
    inputs = open_inputs(files, preprocess=PRE, views=ViewSpec())
    lines = layout_lines(inputs)
    assert lines[0] == f"{tmp_path / 'a.mrcs'}: stack of 3 images (.mrcs name)"
    assert lines[1] == f"{tmp_path / 'one.mrc'}: one image"
    assert lines[2].startswith(f"{tmp_path / 'p.mrc'}: stack of 5 images (space group 1")
    forced = layout_lines(open_inputs([files[2]], preprocess=PRE, views=ViewSpec(as_volume=True)))
    assert forced == [f"{tmp_path / 'p.mrc'}: volume of 5x8x8 (--volume)"]
    probs = np.zeros((9, 2), np.float32)
    probs[:, 0] = np.linspace(0.1, 0.9, 9)
    probs[:, 1] = 1 - probs[:, 0]
    agg = input_aggregates(inputs, probs, ["x", "y"])
    assert [r["images"] for r in agg] == [3, 1, 5] and [r["layout"] for r in agg] == [
        "stack", "image", "stack"]
    assert agg[2]["probabilities"]["x"] == pytest.approx(probs[4:, 0].mean())
    assert agg[0]["counts"] == {"x": 0, "y": 3} and agg[2]["predicted"] == "x"


def test_layout_summary_for_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("biocnn.report.SHOW_FILES", 2)
    for i in range(3):
        write_mrc(tmp_path / f"s{i}.mrcs", np.zeros((2, 8, 8), np.float32), apix=1.0, is_stack=True)
    write_mrc(tmp_path / "v.map", np.zeros((8, 8, 8), np.float32), apix=1.0)
    inputs = open_inputs([str(tmp_path)], preprocess=PRE, views=ViewSpec())
    assert layout_lines(inputs) == ["4 MRC files: 3 stacks, 1 volume"]
