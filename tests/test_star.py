"""RELION STAR tables: image names, RELION 3.0 and 3.1 reading, atomic 3.1 writing, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from biocnn.errors import BiocnnError
from biocnn.io.star import (
    format_image_name,
    optics_block,
    parse_image_name,
    read_star,
    write_star,
)

STAR_30 = """
data_

loop_
_rlnImageName #1
_rlnClassNumber #2
_rlnDetectorPixelSize #3
_rlnMagnification #4
000001@Particles/a.mrcs 1 5.0 25000.0
000002@Particles/a.mrcs 2 5.0 25000.0
3@/abs/b.mrcs 1 5.0 50000.0
"""

STAR_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
og1 1 1.25 64 2
og2 2 2.5 32 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnClassNumber #3
_rlnAnglePsi #4
000001@a.mrcs 2 3 10.0
000002@a.mrcs 1 1 20.0
single.mrc 1 3 30.0
"""


@given(
    section=st.integers(0, 10**7),
    path=st.text(st.characters(categories=("L", "N", "P"), exclude_characters="@"), min_size=1),
)
def test_image_name_round_trip(section: int, path: str) -> None:
    assert parse_image_name(format_image_name(section, path)) == (section, path)


def test_parse_image_name_forms() -> None:
    assert parse_image_name("000012@Extract/job1/a.mrcs") == (11, "Extract/job1/a.mrcs")
    assert parse_image_name("7@a.mrcs") == (6, "a.mrcs")
    assert parse_image_name("img.mrc") == (0, "img.mrc")
    for bad in ("0@a.mrcs", "x@a.mrcs", "-1@a.mrcs", "3@"):
        with pytest.raises(BiocnnError, match="bad image name"):
            parse_image_name(bad, "p.star")


def test_read_relion30(tmp_path: Path) -> None:
    p = tmp_path / "r30.star"
    p.write_text(STAR_30)
    table = read_star(p)
    assert table.optics is None and len(table) == 3
    paths, sections = table.image_refs()
    assert paths == [tmp_path / "Particles/a.mrcs"] * 2 + [Path("/abs/b.mrcs")]
    np.testing.assert_array_equal(sections, [0, 1, 2])
    np.testing.assert_allclose(table.pixel_sizes(), [2.0, 2.0, 1.0])  # 5 µm * 1e4 / mag
    assert table.column("rlnClassNumber").tolist() == [1, 2, 1]


def test_read_relion31_pixel_size_per_optics_group(tmp_path: Path) -> None:
    p = tmp_path / "r31.star"
    p.write_text(STAR_31)
    table = read_star(p)
    assert table.optics is not None and len(table.optics) == 2
    np.testing.assert_allclose(table.pixel_sizes(), [2.5, 1.25, 1.25])
    paths, sections = table.image_refs()
    assert paths == [tmp_path / "a.mrcs", tmp_path / "a.mrcs", tmp_path / "single.mrc"]
    np.testing.assert_array_equal(sections, [0, 1, 0])


def test_pixel_size_unknown_without_optics_or_detector(tmp_path: Path) -> None:
    p = tmp_path / "bare.star"
    p.write_text("data_images\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n2@a.mrcs\n")
    np.testing.assert_array_equal(read_star(p).pixel_sizes(), [0.0, 0.0])


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    parts = pd.DataFrame(
        {
            "rlnImageName": [format_image_name(i, "stacks/s.mrcs") for i in range(4)],
            "rlnClassNumber": [1, 2, 2, 1],
            "rlnPredictedClass": ["alpha", "beta", "beta", "alpha"],
        }
    )
    out = write_star(tmp_path / "out" / "p.star", parts, apix=1.7, image_size=48)
    text = out.read_text()
    assert text.index("data_optics") < text.index("data_particles")
    assert sorted(x.name for x in out.parent.iterdir()) == ["p.star"]  # no temp files left
    table = read_star(out)
    assert table.particles["rlnOpticsGroup"].tolist() == [1, 1, 1, 1]
    assert table.particles["rlnPredictedClass"].tolist() == parts["rlnPredictedClass"].tolist()
    np.testing.assert_allclose(table.pixel_sizes(), 1.7)
    assert int(table.optics["rlnImageSize"].iloc[0]) == 48
    paths, sections = table.image_refs()
    assert paths[3] == tmp_path / "out/stacks/s.mrcs" and sections[3] == 3


def test_write_keeps_given_optics(tmp_path: Path) -> None:
    src = tmp_path / "r31.star"
    src.write_text(STAR_31)
    table = read_star(src)
    out = write_star(tmp_path / "copy.star", table.particles, table.optics)
    again = read_star(out)
    pd.testing.assert_frame_equal(again.optics, table.optics)
    np.testing.assert_allclose(again.pixel_sizes(), table.pixel_sizes())


def test_optics_block_columns() -> None:
    block = optics_block(1.1, 64)
    assert block.iloc[0].to_dict() == {
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnOpticsGroup": 1,
        "rlnImagePixelSize": 1.1,
        "rlnImageSize": 64,
        "rlnImageDimensionality": 2,
    }


def test_bad_star_files(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="missing.star not found"):
        read_star(tmp_path / "missing.star")
    junk = tmp_path / "junk.star"
    junk.write_text("hello\nthis is not STAR\n")
    with pytest.raises(BiocnnError, match="junk.star: no particle block"):
        read_star(junk)
    noimg = tmp_path / "noimg.star"
    noimg.write_text("data_particles\n\nloop_\n_rlnClassNumber #1\n1\n2\n")
    with pytest.raises(BiocnnError, match="noimg.star: the particle block has no rlnImageName"):
        read_star(noimg)
    good = tmp_path / "r31.star"
    good.write_text(STAR_31)
    with pytest.raises(BiocnnError, match=r"r31.star: no column 'rlnFoo' .*have: rlnImageName"):
        read_star(good).column("rlnFoo")


def test_optics_group_missing_from_optics_table(tmp_path: Path) -> None:
    p = tmp_path / "r31.star"
    p.write_text(STAR_31.replace("000001@a.mrcs 2 3", "000001@a.mrcs 9 3"))
    with pytest.raises(BiocnnError, match="optics group 9 not in data_optics"):
        read_star(p).pixel_sizes()


def test_relion_project_relative_stack_names(tmp_path, monkeypatch) -> None:
    """Stacks named relative to the RELION project folder, STAR file two levels down."""
    import numpy as np
    import pandas as pd

    from biocnn.io.mrc import write_mrc
    from biocnn.io.star import read_star, write_star

    project = tmp_path / "project"
    write_mrc(project / "Extract" / "job007" / "p.mrcs", np.zeros((3, 8, 8)), apix=1.0, is_stack=True)
    star = project / "Class2D" / "job012" / "run_data.star"
    particles = pd.DataFrame({"rlnImageName": ["000002@Extract/job007/p.mrcs"], "rlnClassNumber": [1]})
    write_star(star, particles, apix=1.0, image_size=8)
    monkeypatch.chdir(tmp_path)
    paths, sections = read_star(star).image_refs()
    assert paths[0].resolve() == (project / "Extract" / "job007" / "p.mrcs").resolve()
    assert sections.tolist() == [1]
