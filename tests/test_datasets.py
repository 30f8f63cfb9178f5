"""Datasets: folder-per-class and STAR sources, lazy per-worker reading, flat memory, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from biocnn.data import (
    PreprocessConfig,
    build_dataset,
    files_dataset,
    stratified_split,
)
from biocnn.data.loader import make_loader
from biocnn.data.preprocess import preprocess_images, resample_images
from biocnn.errors import BiocnnError
from biocnn.io.mrc import ViewSpec, read_view, write_mrc
from biocnn.io.star import format_image_name, optics_block, write_star

AUTO = PreprocessConfig()


def _stack(path: Path, n: int, size: int = 16, apix: float = 1.0, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((n, size, size)).astype(np.float32)
    write_mrc(path, data, apix=apix, is_stack=True)
    return data


# --- folder per class ----------------------------------------------------------------------


def test_folder_dataset(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO)
    assert len(ds) == 12 and ds.class_names == ["alpha", "beta"]
    assert ds.class_counts() == {"alpha": 7, "beta": 5}
    # box: largest input (32 px); apix: largest field of view (24 px * 1.5 Å = 36 Å) / 32 px
    assert (ds.preprocess.box, ds.preprocess.apix) == (32, pytest.approx(1.125))
    assert ds.apix_summary == {"input": [1.0, 1.5, 1.8], "unknown": 0, "output": 1.125, "box": 32}
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == ds.labels[i]
    names = [ds.name(i) for i in range(len(ds))]
    assert names[0].endswith("alpha/single.mrc") and names[1].endswith(
        "000001@" + str(cryo_class_folder / "alpha" / "stack.mrcs")
    )
    assert names[-1].endswith("beta/volume.map:z=10")


def test_folder_dataset_volume_views(cryo_class_folder: Path) -> None:
    views = ViewSpec(slice_axis="y", slices="all", project=True)
    with pytest.warns(UserWarning, match=r"volume.map: a 3D volume in class folder beta gives "
                      r"21 image\(s\) \(slices all \+ projection along y\)"):
        ds = build_dataset(cryo_class_folder, preprocess=AUTO, views=views)
    assert ds.class_counts() == {"alpha": 7, "beta": 4 + 20 + 1}
    assert ds.name(len(ds) - 1).endswith("volume.map:sum_y") and ds.views == views
    ds3 = build_dataset(cryo_class_folder, preprocess=AUTO, views=ViewSpec(slices=3))
    assert ds3.class_counts()["beta"] == 4 + 3


def test_evaluation_maps_folders_to_given_class_names(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO, class_names=["beta", "alpha", "gamma"])
    assert ds.class_names == ["beta", "alpha", "gamma"]
    assert ds.class_counts() == {"beta": 5, "alpha": 7, "gamma": 0}
    with pytest.raises(BiocnnError, match="class 'beta' is not one of the model's classes"):
        build_dataset(cryo_class_folder, preprocess=AUTO, class_names=["alpha", "gamma"])


def test_unlabelled_sources(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO, labeled=False)
    assert len(ds) == 12 and ds.class_names == [] and (ds.labels == -1).all()
    one = build_dataset(cryo_class_folder / "beta" / "stack.mrcs", preprocess=AUTO, labeled=False)
    assert len(one) == 4 and one[3][1] == -1


# --- STAR files ---------------------------------------------------------------------------


def test_star_relion31_dataset(tmp_path: Path) -> None:
    a = _stack(tmp_path / "Particles" / "a.mrcs", 3, apix=0.0, seed=1)
    b = _stack(tmp_path / "Particles" / "b.mrcs", 2, apix=0.0, seed=2)
    parts = pd.DataFrame(
        {
            "rlnImageName": [
                format_image_name(2, "Particles/a.mrcs"),
                format_image_name(0, "Particles/b.mrcs"),
                format_image_name(0, "Particles/a.mrcs"),
                format_image_name(1, "Particles/b.mrcs"),
            ],
            "rlnClassNumber": [10, 2, 1, 2],
            "rlnGroupName": ["x", "y", "x", "y"],
        }
    )
    star = write_star(tmp_path / "run_data.star", parts, apix=2.0, image_size=16)
    ds = build_dataset(star, preprocess=AUTO)  # pixel size from the optics block: no warning
    assert ds.class_names == ["1", "2", "10"]  # numbers sort numerically
    np.testing.assert_array_equal(ds.labels, [2, 1, 0, 1])
    np.testing.assert_array_equal(ds.index.read(0), a[2])
    np.testing.assert_array_equal(ds.index.read(3), b[1])
    assert ds.name(0) == format_image_name(2, tmp_path / "Particles" / "a.mrcs")
    assert ds.apix_summary["input"] == [2.0] and ds.preprocess.box == 16
    by_group = build_dataset(star, preprocess=AUTO, label_column="rlnGroupName")
    assert by_group.class_names == ["x", "y"]
    np.testing.assert_array_equal(by_group.labels, [0, 1, 0, 1])
    unlabelled = build_dataset(star, preprocess=AUTO, labeled=False)
    assert (unlabelled.labels == -1).all() and len(unlabelled) == 4


def test_duplicate_star_rows_warn_and_stay_in_one_split(tmp_path: Path) -> None:
    _stack(tmp_path / "p.mrcs", 12, apix=0.0, seed=1)
    names = [format_image_name(i % 10, "p.mrcs") for i in range(20)]  # rows 10-19 repeat 0-9
    parts = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": [1 + i % 2 for i in range(20)]})
    star = write_star(tmp_path / "d.star", parts, apix=2.0, image_size=16)
    with pytest.warns(UserWarning, match="20 rows name an image that another row names too"):
        ds = build_dataset(star, preprocess=AUTO)
    keys = ds.image_keys()
    for seed in range(5):
        train, val = stratified_split(ds.labels, 0.3, seed, keys)
        assert len(val) and not set(keys[train]) & set(keys[val])
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(20))


def test_pixel_size_override_and_placeholder_warning(tmp_path: Path) -> None:
    stack = _stack(tmp_path / "s.mrcs", 3, apix=1.0, seed=1)
    assert stack.shape == (3, 16, 16)
    fixed = PreprocessConfig(box=16, apix=2.0)
    with pytest.warns(UserWarning, match=r"s.mrcs: header pixel size 1 Å looks like a placeholder; "
                      r"the model expects 2 Å/px; using 1 Å/px \(set it with --apix\)"):
        build_dataset(tmp_path / "s.mrcs", preprocess=fixed, labeled=False)
    ds = build_dataset(tmp_path / "s.mrcs", preprocess=fixed, labeled=False, apix=2.0)
    assert (ds.index.apix == 2.0).all()
    with pytest.raises(BiocnnError, match="input_apix -1"):
        build_dataset(tmp_path / "s.mrcs", preprocess=fixed, labeled=False, apix=-1.0)


def test_star_relion30_dataset_with_header_pixel_size(tmp_path: Path) -> None:
    data = _stack(tmp_path / "stacks" / "s.mrcs", 4, size=20, apix=1.4)
    (tmp_path / "meta").mkdir()
    star = tmp_path / "meta" / "p.star"
    star.write_text(
        "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n"
        + "".join(f"{i + 1}@../stacks/s.mrcs {1 + i % 2}\n" for i in range(4))
    )
    ds = build_dataset(star, preprocess=PreprocessConfig(box=16))
    assert len(ds) == 4 and ds.class_names == ["1", "2"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 0, 1])
    np.testing.assert_array_equal(ds.index.read(2), data[2])
    assert ds.preprocess.apix == pytest.approx(20 * 1.4 / 16)
    assert ds[1][0].shape == (1, 16, 16)


# --- lazy reading, workers, memory ----------------------------------------------------------


def test_dataloader_with_two_workers_matches_serial(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO)
    serial = torch.stack([ds[i][0] for i in range(len(ds))])  # parent's handle cache is warm
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    torch.testing.assert_close(torch.cat(xs), serial)
    np.testing.assert_array_equal(torch.cat(ys).numpy(), ds.labels)


def test_batches_match_the_image_by_image_pipeline(tmp_path: Path) -> None:
    """A batch mixing a stack read as is (already at the box and pixel size) with one that
    is resampled, in any order with repeats, equals reading and resampling every image
    alone; standardised, it equals the whole pipeline."""
    rng = np.random.default_rng(4)
    _stack(tmp_path / "maps" / "a" / "s.mrcs", 8, size=32, apix=2.0, seed=1)  # resampled
    data = (50 + 3 * rng.standard_normal((5, 40, 40))).astype(np.float32)
    write_mrc(tmp_path / "maps" / "b" / "s.mrcs", data, apix=1.6, is_stack=True)  # fused
    ds = build_dataset(tmp_path / "maps", preprocess=PreprocessConfig(invert=True))
    assert (ds.preprocess.box, ds.preprocess.apix) == (40, pytest.approx(1.6))
    rows = np.asarray([12, 0, 9, 3, 12, 8, 1, 10])
    images, labels = ds.batch(rows)
    assert images.shape == (8, 1, 40, 40) and labels.tolist() == ds.labels[rows].tolist()
    for got, i in zip(images, rows, strict=True):
        f = ds.index.files[ds.index.file_id[i]]
        one = read_view(f, int(ds.index.kind[i]), int(ds.index.section[i]))[None]
        torch.testing.assert_close(got, resample_images(one, ds.preprocess, float(ds.index.apix[i])),
                                   atol=1e-5, rtol=1e-5)
        expected = preprocess_images(one, ds.preprocess, float(ds.index.apix[i]))
        torch.testing.assert_close(ds.preprocess.standardizer()(got), expected, atol=1e-5, rtol=1e-5)
    assert len(ds.__getitems__([3, 1])) == 2
    empty, none = ds.batch([])
    assert empty.shape == (0, 1, 40, 40) and none.shape == (0,)


def test_make_loader_reads_whole_batches_and_sets_the_epoch(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO)
    serial = torch.stack([ds[i][0] for i in range(len(ds))])
    for workers in (0, 2):
        loader = make_loader(ds, 5, num_workers=workers)
        xs, ys = zip(*loader, strict=True)
        assert [len(x) for x in xs] == [5, 5, 2]
        torch.testing.assert_close(torch.cat(xs), serial)
        np.testing.assert_array_equal(torch.cat(ys).numpy(), ds.labels)
    shuffled = make_loader(ds, 4, shuffle=True, seed=0)
    first = torch.cat([x for x, _ in shuffled])
    torch.testing.assert_close(first.sum(0), serial.sum(0), atol=1e-4, rtol=1e-4)  # each once
    assert not torch.equal(first, serial)
    torch.testing.assert_close(torch.cat([x for x, _ in shuffled]), first)  # same epoch, same order
    shuffled.set_epoch(3)
    assert not torch.equal(torch.cat([x for x, _ in shuffled]), first)


def test_dataset_holds_no_pixels(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO, views=ViewSpec(slices="all"))
    before = len(pickle.dumps(ds))
    for i in range(len(ds)):
        ds[i]
    assert len(pickle.dumps(ds)) == before  # reading caches nothing on the object
    pixels = sum(p.stat().st_size for p in cryo_class_folder.rglob("*.m*"))
    assert before < pixels / 10
    assert pickle.loads(pickle.dumps(ds))[5][0].shape == (1, 32, 32)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=80),
    frac=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_properties(labels: list[int], frac: float, seed: int) -> None:
    y = np.asarray(labels)
    train, val = stratified_split(y, frac, seed)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    for c in np.unique(y):
        n_c, v_c = (y == c).sum(), (y[val] == c).sum()
        assert (y[train] == c).sum() >= 1
        if frac > 0 and n_c >= 2:
            assert v_c >= 1 and abs(v_c - n_c * frac) <= max(1, 0.5 + 1e-9)
    again = stratified_split(y, frac, seed)
    np.testing.assert_array_equal(again[1], val)


def test_subset_keeps_classes_and_preprocessing(cryo_class_folder: Path) -> None:
    ds = build_dataset(cryo_class_folder, preprocess=AUTO)
    train, val = stratified_split(ds.labels, 0.3, seed=0)
    sub = ds.subset(val)
    assert len(sub) == len(val) and sub.class_names == ds.class_names
    assert sub.preprocess == ds.preprocess
    torch.testing.assert_close(sub[0][0], ds[int(val[0])][0])
    with pytest.raises(BiocnnError, match="val_fraction"):
        stratified_split(ds.labels, 1.0, 0)


# --- bad input ---------------------------------------------------------------------------


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="input .*nowhere not found"):
        build_dataset(tmp_path / "nowhere", preprocess=AUTO)
    flat = tmp_path / "flat"
    _stack(flat / "s.mrcs", 2)
    with pytest.raises(BiocnnError, match="no class sub-folders"):
        build_dataset(flat, preprocess=AUTO)
    with pytest.raises(BiocnnError, match="a single file has no labels"):
        build_dataset(flat / "s.mrcs", preprocess=AUTO)
    one = tmp_path / "one"
    _stack(one / "only" / "s.mrcs", 3)
    with pytest.raises(BiocnnError, match=r"at least 2 classes, found 1 \(only\)"):
        build_dataset(one, preprocess=AUTO)
    (one / "empty").mkdir()
    with pytest.raises(BiocnnError, match="class folder .*empty has no .mrc"):
        build_dataset(one, preprocess=AUTO)


def test_bad_file_in_class_folder_is_named(cryo_class_folder: Path) -> None:
    (cryo_class_folder / "beta" / "broken.mrc").write_bytes(b"not an MRC" * 200)
    with pytest.raises(BiocnnError, match="broken.mrc: not a readable MRC file"):
        build_dataset(cryo_class_folder, preprocess=AUTO)


def test_unknown_pixel_size_warns(tmp_path: Path) -> None:
    _stack(tmp_path / "d" / "a" / "s.mrcs", 2, apix=0.0)
    _stack(tmp_path / "d" / "b" / "s.mrcs", 2, apix=0.0)
    with pytest.warns(UserWarning, match="2 file\\(s\\) have no pixel size"):
        ds = build_dataset(tmp_path / "d", preprocess=AUTO)
    assert ds.preprocess.apix == 0.0 and ds.apix_summary["unknown"] == 4


def test_star_errors(tmp_path: Path) -> None:
    _stack(tmp_path / "s.mrcs", 3, apix=1.0)

    def star(names: list[str], **cols: list) -> Path:
        parts = pd.DataFrame({"rlnImageName": names, **cols})
        return write_star(tmp_path / "p.star", parts, optics_block(1.0, 16))

    ok = star(["1@s.mrcs", "2@s.mrcs"], rlnClassNumber=[1, 2])
    with pytest.raises(BiocnnError, match="p.star: no column 'rlnDefocusU'"):
        build_dataset(ok, preprocess=AUTO, label_column="rlnDefocusU")
    missing = star(["1@s.mrcs", "1@gone.mrcs"], rlnClassNumber=[1, 2])
    with pytest.raises(BiocnnError, match="p.star: image file .*gone.mrcs not found"):
        build_dataset(missing, preprocess=AUTO)
    out_of_range = star(["1@s.mrcs", "4@s.mrcs"], rlnClassNumber=[1, 2])
    with pytest.raises(BiocnnError, match=r"p.star: image 4@.*s.mrcs out of range \(3 images"):
        build_dataset(out_of_range, preprocess=AUTO)
    single = star(["1@s.mrcs", "2@s.mrcs"], rlnClassNumber=[1, 1])
    with pytest.raises(BiocnnError, match="at least 2 classes, found 1"):
        build_dataset(single, preprocess=AUTO)
    with pytest.raises(BiocnnError, match="STAR file .*absent.star not found"):
        build_dataset(tmp_path / "absent.star", preprocess=AUTO)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header statistics on NaN
def test_nan_image_reported_when_read(tmp_path: Path) -> None:
    data = np.zeros((3, 16, 16), np.float32)
    data[1, 0, 0] = np.nan
    write_mrc(tmp_path / "d" / "a" / "s.mrcs", data, apix=1.0, is_stack=True)
    _stack(tmp_path / "d" / "b" / "s.mrcs", 2)
    ds = build_dataset(tmp_path / "d", preprocess=AUTO)  # headers only: builds fine
    ds[0]
    with pytest.raises(BiocnnError, match="s.mrcs: image 2 contains NaN or Inf"):
        ds[1]


def test_stack_shrunk_on_disk_is_a_named_error(tmp_path: Path) -> None:
    """The fused read path checks indices against the file as it is now."""
    stack = tmp_path / "s.mrcs"
    _stack(stack, 5, size=16, apix=1.0)
    ds = files_dataset([stack], preprocess=PreprocessConfig(box=16, apix=1.0))
    ds.batch([4])
    _stack(stack, 3, size=16, apix=1.0, seed=1)  # replaced by a shorter stack
    with pytest.raises(BiocnnError, match=r"s.mrcs: image index 5 out of range \(3 images\)"):
        ds.batch([4])
