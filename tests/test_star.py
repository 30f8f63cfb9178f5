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


# --- robustness: indices, encodings, quoting, other formats ------------------------------------

REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "data" / "realworld"


def _star(tmp_path: Path, rows: str, name: str = "p.star", extra: str = "") -> Path:
    p = tmp_path / name
    p.write_text(f"# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n"
                 f"{extra}{rows}")
    return p


def test_image_index_is_bounded() -> None:
    for bad in ("12345678901234567890@a.mrcs", "2147483648@a.mrcs", "9" * 2000 + "@a.mrcs"):
        with pytest.raises(BiocnnError, match=r"p.star: bad image name .*out of range 1\.\.2147483647") as e:
            parse_image_name(bad, "p.star")
        assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert parse_image_name("2147483647@a.mrcs") == (2147483646, "a.mrcs")
    with pytest.raises(BiocnnError, match=r"p.star: image name of 100007 characters starting '1@aaa"):
        parse_image_name("1@" + "a" * 100_000 + ".mrcs", "p.star")
    for bad in ("²@a.mrcs", "١@a.mrcs", "+3@a.mrcs", " @a.mrcs"):  # non-ASCII digits, sign, blank
        with pytest.raises(BiocnnError, match="bad image name"):
            parse_image_name(bad, "p.star")


def test_twenty_digit_index_in_a_star_file(tmp_path: Path) -> None:
    p = _star(tmp_path, "12345678901234567890@a.mrcs 1\n")
    with pytest.raises(BiocnnError, match=r"p.star: bad image name '12345678901234567890@a.mrcs'"):
        read_star(p).image_refs()


def test_latin1_star_is_read_with_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "latin.star"
    text = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n1@a.mrcs café.mrc\n"
    p.write_bytes(text.encode("latin-1"))
    with pytest.warns(UserWarning, match=r"latin.star: not UTF-8 \(byte 0xe9 on line 6\); read as Latin-1"):
        table = read_star(p)
    assert table.particles["rlnMicrographName"].tolist() == ["café.mrc"]


def test_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "bom.star"
    p.write_bytes("\ufeffdata_\r\n\r\nloop_\r\n_rlnImageName #1\r\n1@a.mrcs\r\n2@a.mrcs\r\n".encode())
    assert read_star(p).image_refs()[1].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("rows", "line", "count"),
    [
        ("1@a.mrcs 1\n2@my stack.mrcs 2\n", 9, 3),  # unquoted space: one value too many
        ("1@a.mrcs 1\n2@a.mrcs\n", 9, 1),  # one value missing
    ],
)
def test_rows_with_the_wrong_number_of_values_name_their_line(
    tmp_path: Path, rows: str, line: int, count: int
) -> None:
    p = _star(tmp_path, rows)
    with pytest.raises(BiocnnError) as exc:
        read_star(p)
    assert str(exc.value) == (
        f"{p}: line {line} has {count} values but data_particles has 2 columns "
        "(values with spaces must be quoted)"
    )


def test_quoted_values_may_hold_spaces(tmp_path: Path) -> None:
    p = _star(tmp_path, "\"1@my stack.mrcs\" 1\n'2@my stack.mrcs' 2\n3@plain.mrcs 3\n")
    table = read_star(p)
    assert table.particles["rlnImageName"].tolist() == [
        "1@my stack.mrcs", "2@my stack.mrcs", "3@plain.mrcs"
    ]
    assert table.particles["rlnClassNumber"].tolist() == [1, 2, 3]


def test_key_value_blocks_and_empty_loops(tmp_path: Path) -> None:
    p = tmp_path / "kv.star"
    p.write_text(
        "data_general\n\n_rlnImageSizeX 64\n_rlnComment 'two words'\n\n"
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n1@a.mrcs 1.7\n2@a.mrcs 1.8\n"
    )
    table = read_star(p)
    assert table.optics is not None and len(table.optics) == 0
    np.testing.assert_allclose(table.pixel_sizes(), [1.7, 1.8])  # per-particle column wins


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"II*\0" + b"\0" * 100, r"x.star: TIFF is not supported \(biocnn reads MRC"),
        (b"\x93NUMPY\x01\x00" + b"\0" * 100, r"x.star: cryoSPARC .cs \(NumPy\) file, not a STAR file"),
        (b"data_\nloop_\n_rlnImageName\n1@a\0.mrcs\n", r"x.star: not a STAR file \(binary data"),
        (b"", r"x.star: an empty file is not supported"),
        ("data_\nloop_\n_rlnImageName\n1@a.mrcs\n".encode("utf-16"), r"x.star: UTF-16 text; save the STAR"),
    ],
)
def test_other_formats_refused(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.star"
    p.write_bytes(content)
    with pytest.raises(BiocnnError, match=message):
        read_star(p)


def test_an_mrc_file_given_as_star(tmp_path: Path) -> None:
    from biocnn.io.mrc import write_mrc

    p = write_mrc(tmp_path / "x.star", np.zeros((2, 8, 8)), apix=1.0, is_stack=True)
    with pytest.raises(BiocnnError, match=r"x.star: MRC file, not a STAR file"):
        read_star(p)


# --- duplicates and pixel sizes ----------------------------------------------------------------


def test_duplicate_images_and_groups(tmp_path: Path) -> None:
    rows = "1@a.mrcs 1\n2@a.mrcs 1\n000001@./a.mrcs 2\n1@b.mrcs 1\n2@a.mrcs 3\n3@a.mrcs 1\n"
    table = read_star(_star(tmp_path, rows))
    assert table.duplicate_images().tolist() == [True, True, True, False, True, False]
    assert table.image_groups().tolist() == [0, 1, 0, 3, 1, 5]
    none = read_star(_star(tmp_path, "1@a.mrcs 1\n2@a.mrcs 1\n", name="u.star"))
    assert not none.duplicate_images().any() and none.image_groups().tolist() == [0, 1]


def test_pixel_size_mismatches_against_headers(tmp_path: Path) -> None:
    from biocnn.io.mrc import write_mrc

    write_mrc(tmp_path / "a.mrcs", np.zeros((2, 8, 8)), apix=1.0, is_stack=True)  # placeholder
    write_mrc(tmp_path / "b.mrcs", np.zeros((2, 8, 8)), apix=2.82, is_stack=True)  # within 1 %
    write_mrc(tmp_path / "c.mrcs", np.zeros((2, 8, 8)), apix=0.0, is_stack=True)  # unknown
    p = tmp_path / "r31.star"
    p.write_text(STAR_31.replace("single.mrc", "2@b.mrcs").replace("000002@a.mrcs", "1@c.mrcs")
                 .replace("og1 1 1.25", "og1 1 2.806"))
    table = read_star(p)
    np.testing.assert_allclose(table.pixel_sizes(), [2.5, 2.806, 2.806])
    with pytest.warns(UserWarning, match="pixel size unknown"):  # c.mrcs's header quirk
        assert table.pixel_size_mismatches() == [(tmp_path / "a.mrcs", 2.5, 1.0)]
    fake = {tmp_path / "a.mrcs": 2.5, tmp_path / "b.mrcs": 3.0, tmp_path / "c.mrcs": 0.0}
    assert table.pixel_size_mismatches(fake) == [(tmp_path / "b.mrcs", 2.806, 3.0)]
    assert table.pixel_size_mismatches(fake, rtol=0.1) == []


# --- the real files from ../shared ------------------------------------------------------------


@pytest.mark.skipif(not (REALWORLD / "relion31.star").is_file(), reason="no ../shared real-world data")
@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_real_relion31_star_files(tmp_path: Path, name: str) -> None:
    """The real STAR names its stack relative to a RELION project (Extract/job133/...): placed
    there, the 5 particles resolve, read with the STAR's 2.806 Å, and disagree with the
    header's 1 Å placeholder."""
    import shutil
    import warnings

    from biocnn.io.mrc import read_sections

    src = REALWORLD / name
    if not src.is_file():
        pytest.skip(f"{name} absent")
    table = read_star(src)
    assert len(table) == 5 and table.optics is not None
    np.testing.assert_allclose(table.pixel_sizes(), 2.806)
    assert int(table.optics["rlnImageSize"].iloc[0]) == 256
    assert not table.duplicate_images().any()
    rel = table.particles["rlnImageName"].iloc[0].split("@", 1)[1]
    project = tmp_path / "project"
    stack = project / rel
    stack.parent.mkdir(parents=True)
    shutil.copy(REALWORLD / "relion31.mrcs", stack)
    (project / "Class2D" / "job001").mkdir(parents=True)
    star = shutil.copy(src, project / "Class2D" / "job001" / name)
    table = read_star(star)
    paths, sections = table.image_refs()
    assert {p.resolve() for p in paths} == {stack.resolve()} and sections.tolist() == [0, 1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stack's header quirks
        assert table.pixel_size_mismatches() == [(paths[0], 2.806, 1.0)]
        assert read_sections(paths[0], sections).shape == (5, 256, 256)
