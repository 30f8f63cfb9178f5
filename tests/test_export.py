"""``biocnn export --onnx``: onnxruntime agrees with torch, APS's phase choice survives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from biocnn.checkpoint import load_classifier, save_checkpoint
from biocnn.cli import app
from biocnn.data.preprocess import PreprocessConfig
from biocnn.io.mrc import ViewSpec
from biocnn.models.registry import create_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from biocnn.export import _aps_sites, aps_argmax_count, export_onnx, onnx_logits  # noqa: E402


def _checkpoint(path: Path, name: str, widths: list[int], normalize: bool = True, **kw: object
                ) -> Path:
    """An untrained good/junk model with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, widths=widths, **kw).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    pre = PreprocessConfig(box=32, apix=2.0, normalize=normalize)
    save_checkpoint(path, model, {"class_names": ["good", "junk"], "preprocess": pre.to_dict(),
                                  "views": ViewSpec().to_dict()})
    return path


def _shifted(x: torch.Tensor) -> torch.Tensor:
    """``(1, 1, H, W)`` -> ``(4, 1, H, W)``: circular shifts by (0|1, 0|1): each moves APS's
    kept polyphase component to another phase."""
    return torch.cat([torch.roll(x, (i, j), (2, 3)) for i in range(2) for j in range(2)])


def _first_aps_phases(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    """Phase (0-3) the first downsampling layer keeps for each sample of ``x``."""
    from biocnn.models import layers

    y = layers.circular_pad(x, (1, 1, 1, 1))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    y = torch.nn.functional.conv2d(y, first.weight, first.bias)
    b, c, h, w = y.shape
    return layers._component_norms(y.view(b, c, h // 2, 2, w // 2, 2)).argmax(1).tolist()


@pytest.mark.parametrize(("name", "widths", "kw"), [
    ("invariant", [4, 8, 8], {}),  # APSConv2d
    ("invariant", [4, 8], {"fast": False, "order": "conv_norm_down"}),  # separate APS2d layer
    ("invariant_d4", [2, 4], {}),  # D4 lifting/group convs with aps_conv2d
    ("invariant", [4, 8], {"canonical": True}),  # ShiftCanonical: atan2 + shift matrices
    ("invariant_d4", [2, 4], {"canonical": True, "canonical_blur": 2.0}),  # energy centroid
    ("invariant", [4, 8], {"max_filter": True}),  # APS2d over the max filter's components
    # APS phases from the centroid (the ArgMax stays: it is the ambiguous centroid's fallback)
    ("invariant", [4, 8, 8], {"phase": "centroid", "order": "conv_norm_down", "fast": False}),
    ("invariant", [4, 8, 8], {"canonical": True, "canonical_blur": 2.0, "phase": "centroid"}),
    ("invariant_d4", [2, 4], {"canonical": True, "canonical_blur": 2.0, "phase": "centroid"}),
    ("invariant_d4", [2, 4], {"max_filter": True}),  # 3x3 max filter, then an inline APS2d
    ("invariant_d4", [2, 4], {"canonical": True, "canonical_blur": 2.0, "phase": "centroid",
                              "max_filter": True}),  # biocnn train's default: strided max
])
def test_onnx_matches_torch_and_keeps_aps_phase(tmp_path: Path, name: str, widths: list[int],
                                                kw: dict) -> None:
    # no normalisation: a shift of the raw input is then a shift of the model's input
    ckpt = _checkpoint(tmp_path / "m.pt", name, widths, normalize=False, **kw)
    path, argmaxes = export_onnx(ckpt, tmp_path / "m.onnx")
    clf = load_classifier(ckpt, "cpu")
    assert argmaxes == aps_argmax_count(path) == _aps_sites(clf.model) >= 1
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([_shifted(torch.randn(1, 1, 32, 32, generator=gen)),
                   torch.randn(3, 1, 32, 32, generator=gen) * 5 + 2])
    if name == "invariant" and not kw:  # the shifted copies really take different phases
        assert len(set(_first_aps_phases(clf.model, x[:4]))) == 4
    ref, got = clf.logits(x), onnx_logits(path, x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # a phase frozen at export time would break the exact shift invariance
    torch.testing.assert_close(got[:4], got[:1].expand(4, -1), atol=1e-4, rtol=0)


def test_onnx_includes_standardisation(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", "invariant", [4, 8])
    path, _ = export_onnx(ckpt, tmp_path / "m.onnx")
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 30 + 1000
    clf = load_classifier(ckpt, "cpu")
    torch.testing.assert_close(onnx_logits(path, x), clf.logits(x), atol=1e-4, rtol=0)
    # and it is not the model alone: raw counts around 1000 would give other logits
    assert not torch.allclose(clf.model(x), clf.logits(x), atol=1e-3)


def test_export_cli_writes_and_refuses_existing(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", "invariant", [4, 8])
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and "1 APS ArgMax" in result.output
    again = runner.invoke(app, ["export", str(ckpt), "--onnx", str(out)])
    assert again.exit_code == 1 and "exists" in again.output
