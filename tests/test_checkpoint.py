"""Checkpoints: round trip, and hostile or damaged files refused in one line before
anything is built or allocated."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biocnn import BiocnnError, create_model
from biocnn.checkpoint import load_checkpoint, load_classifier, save_checkpoint
from biocnn.data import PreprocessConfig, ViewSpec


def _good(path: Path) -> dict:
    model = create_model("invariant", num_classes=2, widths=[4, 8])
    pre = PreprocessConfig(box=16, apix=2.0)
    save_checkpoint(path, model, {"class_names": ["a", "b"], "preprocess": pre.to_dict(),
                                  "views": ViewSpec().to_dict()})
    return torch.load(path, weights_only=True)


def test_round_trip_and_standardizer(tmp_path: Path) -> None:
    _good(tmp_path / "m.pt")
    clf = load_classifier(tmp_path / "m.pt", "cpu")
    assert clf.class_names == ["a", "b"] and clf.box == 16
    x = torch.randn(3, 1, 16, 16) * 7 + 100
    torch.testing.assert_close(clf.logits(x), clf.model(clf.standardize(x)))


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["preprocess"].update(box=100000), "box 100000 is outside"),
    (lambda c: c["preprocess"].update(box="big"), "box 'big'"),
    (lambda c: c["preprocess"].update(apix=-1.0), "pixel size -1.0"),
    (lambda c: c["model_kwargs"].update(widths=[10**6, 10**6]), "widths"),
    (lambda c: c["model_kwargs"].update(widths=[4096] * 8), "parameters"),
    (lambda c: c.update(class_names=["a", "b", "c"]), "3 class names for a 2-class model"),
    (lambda c: c.update(class_names="ab"), "class_names must be a list"),
    (lambda c: c.update(model_kwargs=[1, 2]), "model_kwargs must be a dict"),
    (lambda c: c["model_kwargs"].update(num_classes=-3), "num_classes"),
    (lambda c: c["model_kwargs"].update(bogus=1), "bad options"),
    (lambda c: c.update(model_name="resnet1000"), "unknown model 'resnet1000'"),
    (lambda c: c.update(state_dict={"w": [1, 2]}), "state_dict must map names to tensors"),
])
def test_hostile_fields_are_refused_in_one_line(tmp_path: Path, change, message: str) -> None:
    ckpt = _good(tmp_path / "m.pt")
    change(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(BiocnnError, match=message) as err:
        load_classifier(tmp_path / "bad.pt", "cpu")
    assert "\n" not in str(err.value) and str(tmp_path / "bad.pt") in str(err.value)


def test_damaged_file_message_is_ours(tmp_path: Path) -> None:
    _good(tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:300])
    with pytest.raises(BiocnnError) as err:
        load_checkpoint(tmp_path / "cut.pt")
    assert str(err.value).endswith("not a readable biocnn checkpoint (damaged, truncated or not "
                                   "a PyTorch file)")


_ALLOC = """
import resource, sys, torch
from biocnn.checkpoint import load_classifier
from biocnn import BiocnnError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_classifier(sys.argv[1], "cpu")
except BiocnnError as exc:
    print("refused", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_refusal_allocates_nothing_large(tmp_path: Path) -> None:
    """A 40 GB box or 10^12 weights are refused with < 200 MB allocated."""
    ckpt = _good(tmp_path / "m.pt")
    ckpt["model_kwargs"]["widths"] = [8192] * 6
    torch.save(ckpt, tmp_path / "huge.pt")
    out = subprocess.run([sys.executable, "-c", _ALLOC, str(tmp_path / "huge.pt")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "refused" and int(out[1]) < 200, out
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True), st.text(max_size=5),
                    st.lists(st.integers(-5, 10**7), max_size=6), st.dictionaries(st.text(max_size=3),
                                                                               st.integers(), max_size=2))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["model_kwargs.widths", "model_kwargs.num_classes",
                              "model_kwargs.in_chans", "model_kwargs.dropout",
                              "preprocess.box", "preprocess.apix", "preprocess.mask_radius",
                              "views.slices", "class_names", "model_kwargs", "preprocess"]),
       value=_VALUES)
def test_any_field_value_reads_or_fails_in_one_line(tmp_path: Path, field: str, value) -> None:
    ckpt = _good(tmp_path / "m.pt")
    head, _, key = field.partition(".")
    if key and isinstance(ckpt.get(head), dict):
        ckpt[head][key] = value
    else:
        ckpt[head] = value
    torch.save(ckpt, tmp_path / "h.pt")
    try:
        load_classifier(tmp_path / "h.pt", "cpu")
    except BiocnnError as exc:
        assert "\n" not in str(exc)


_FULL_DISK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # a 20 kB file-size limit
from biocnn import BiocnnError, create_model
from biocnn.checkpoint import save_checkpoint
try:
    save_checkpoint(sys.argv[1], create_model("invariant", num_classes=2), {})
except BiocnnError as exc:
    print(exc)
"""


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limits")
def test_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "m.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == f"cannot write {tmp_path / 'm.pt'}: disk full or file size limit reached" \
        or out.stdout.strip() == f"cannot write {tmp_path / 'm.pt'}: file size limit reached", out
    assert list(tmp_path.iterdir()) == []
