"""Export a ``biocnn train`` checkpoint to ONNX, input standardisation included.

The exported graph maps raw resampled images ``(B, 1, box, box)`` (what
:func:`biocnn.data.inputs.open_inputs` yields: the checkpoint's box and pixel size, not yet
standardised) to ``(B, K)`` logits, so a consumer needs no biocnn code beyond resampling.

Adaptive polyphase sampling (APS) picks, per sample, the polyphase component of largest
norm. The training-time kernels pick it with Python-side loops (``.tolist()``) that a
tracer would freeze into a constant phase, so during export every APS site is swapped for
a graph-friendly form of the same computation: full circular conv, the four component
norms, ``ArgMax`` and a one-hot weighted sum of the components (multiplying by exact 0/1
and adding zeros changes no bit of the kept component). Models with ``phase="centroid"``
compute the centroid's phases in the graph and use the ``ArgMax`` only where the centroid
is ambiguous. :func:`aps_argmax_count` checks that the written graph holds one ``ArgMax``
per APS site.

Example
-------
    >>> export_onnx("runs/train-x/best.pt", "model.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biocnn.atomic import atomic_path
from biocnn.checkpoint import load_classifier
from biocnn.errors import BiocnnError
from biocnn.models import d4 as _d4
from biocnn.models import layers as _layers

__all__ = ["ExportModel", "export_onnx", "aps_argmax_count", "onnx_logits", "OPSET"]

#: ONNX opset written (ArgMax, OneHot-free one-hot via Equal, circular pads via Slice/Concat).
OPSET = 17


class ExportModel(nn.Module):
    """Standardisation + classifier in one module: ``(B, 1, box, box)`` raw -> ``(B, K)`` logits."""

    def __init__(self, standardize: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.standardize, self.model = standardize, model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.standardize(x)).float()


def _select_component(y: Tensor, given: Tensor | None = None) -> Tensor:
    """APS of ``y (B, C, H, W)`` (even ``H, W``) -> ``(B, C, H/2, W/2)``, traceable: the
    phase is an ``ArgMax`` of the four component norms (or ``given (B,)`` where ``>= 0``,
    :func:`~biocnn.models.layers.centroid_phases`), kept by an exact one-hot sum."""
    _, c, h, w = y.shape
    comps = y.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
    comps = comps.reshape(-1, 4, c, h // 2, w // 2)  # component q = 2 i + j, as in layers.py
    norms = comps.float().square().sum(dim=(2, 3, 4))  # (B, 4)
    phase = norms.argmax(dim=1, keepdim=True)  # (B, 1): first maximum, as torch.argmax
    if given is not None:
        phase = torch.where(given.view(-1, 1) < 0, phase, given.view(-1, 1))
    onehot = (phase == torch.arange(4, device=y.device).view(1, 4)).to(y.dtype)
    return (comps * onehot.view(-1, 4, 1, 1, 1)).sum(dim=1)


def _export_aps_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                       phase: Tensor | None = None) -> Tensor:
    """Graph-friendly :func:`biocnn.models.layers.aps_conv2d` (same output)."""
    h, w = x.shape[-2:]
    p = weight.shape[-1] // 2
    y = F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), weight, bias)
    if h % 2 or w % 2:
        return y
    return _select_component(y, phase)


def _export_aps2d(self: _layers.APS2d, x: Tensor, phase: Tensor | None = None) -> Tensor:
    """Graph-friendly :meth:`biocnn.models.layers.APS2d.forward` (same output)."""
    h, w = x.shape[-2:]
    if self.max_filter is not None:
        x = self.max_filter(x)  # the dense filter, whose components the layer keeps
    if h % 2 or w % 2:
        return x
    if self.blur is not None:
        x = self.blur(x)
    return _select_component(x, phase)


def _export_strided_max(yp: Tensor, phase: Tensor) -> Tensor:
    """Graph-friendly ``biocnn.models.d4._strided_max`` (same output): the dense 3x3 max
    filter of the padded map, then the component at ``phase`` (norms where it is ``-1``)."""
    return _select_component(F.max_pool2d(yp, 3, stride=1), phase)


def _export_global_pool(self: _layers.GlobalPool2d, x: Tensor) -> Tensor:
    """Graph-friendly :class:`biocnn.models.layers.GlobalPool2d` (no autograd.Function)."""
    flat = x.flatten(2)
    outs = []
    if self.mode != "max":
        outs.append(flat.mean(dim=2))
    if self.mode != "avg":
        outs.append(flat.amax(dim=2))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


@contextlib.contextmanager
def _graph_friendly_layers() -> Iterator[None]:
    """Swap the APS kernels and the global pool for traceable forms while exporting."""
    saved = (_layers.aps_conv2d, _d4.aps_conv2d, _layers.APS2d.forward,
             _layers.GlobalPool2d.forward, _d4._strided_max)
    _layers.aps_conv2d = _d4.aps_conv2d = _export_aps_conv2d
    _layers.APS2d.forward = _export_aps2d  # type: ignore[method-assign]
    _layers.GlobalPool2d.forward = _export_global_pool  # type: ignore[method-assign]
    _d4._strided_max = _export_strided_max
    try:
        yield
    finally:
        (_layers.aps_conv2d, _d4.aps_conv2d, _layers.APS2d.forward,
         _layers.GlobalPool2d.forward, _d4._strided_max) = saved


def _aps_sites(model: nn.Module) -> int:
    """APS layers of ``model`` that downsample (each becomes one ``ArgMax``)."""
    n = 0
    for m in model.modules():
        if isinstance(m, _layers.APSConv2d | _layers.APS2d):
            n += 1
        elif isinstance(m, _d4._D4Conv) and m.aps:
            n += 1
    return n


def export_onnx(checkpoint: str | os.PathLike, path: str | os.PathLike, batch: int = 2
                ) -> tuple[Path, int]:
    """Write ``checkpoint`` (standardisation + model) as ONNX to ``path``, atomically.

    The graph has input ``images`` ``(B, 1, box, box)`` float32 (any ``B``) and output
    ``logits`` ``(B, K)``. Returns the path and the number of APS ``ArgMax`` nodes, checked
    against the model's APS layers (an APS exported as a constant phase is refused).

    Raises
    ------
    BiocnnError
        Unreadable checkpoint, ONNX packages missing, or a graph without the APS selection.
    """
    try:
        import onnx  # noqa: F401  the exporter needs it; a clear message beats its ImportError
    except ImportError:
        raise BiocnnError("ONNX export needs the onnx package (pip install onnx)") from None
    clf = load_classifier(checkpoint, "cpu")
    wrapped = ExportModel(clf.standardize, clf.model).eval()
    example = torch.randn(batch, 1, clf.box, clf.box)
    expected = _aps_sites(clf.model)
    with atomic_path(path, suffix=".onnx") as tmp, _graph_friendly_layers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(wrapped, (example,), str(tmp), input_names=["images"],
                          output_names=["logits"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        found = aps_argmax_count(tmp)
    if found < expected:
        raise BiocnnError(f"{path}: the exported graph has {found} ArgMax node(s) for "
                          f"{expected} APS layer(s); the phase choice did not survive")
    return Path(path), found


def aps_argmax_count(path: str | os.PathLike) -> int:
    """Number of ``ArgMax`` nodes in the ONNX graph at ``path`` (one per exported APS)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return sum(node.op_type == "ArgMax" for node in graph.node)


def onnx_logits(path: str | os.PathLike, images: Tensor) -> Tensor:
    """``(B, 1, box, box)`` raw images -> ``(B, K)`` logits computed by onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BiocnnError("onnxruntime is not installed (pip install onnxruntime)") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"images": images.float().cpu().numpy()})
    return torch.from_numpy(out)
