"""Checkpoints: plain dicts saved atomically, loaded with ``weights_only=True``; the
:class:`Classifier` that ``predict`` / ``evaluate`` / ``select`` use.

A checkpoint holds ``model_name``, ``model_kwargs``, ``state_dict``, ``biocnn_version`` and
whatever the trainer adds (class names, preprocessing, views, config, metrics). Loading
validates every field before anything is built, so a hostile or damaged file is refused
in one line without allocating for it.

Example
-------
    >>> clf = load_classifier("runs/train-x/best.pt")  # doctest: +SKIP
    >>> logits = clf.logits(images)  # (B, 1, box, box) raw pixels -> (B, K)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from biocnn import __version__
from biocnn.atomic import atomic_path
from biocnn.config import to_plain
from biocnn.data.preprocess import PreprocessConfig, Standardize
from biocnn.errors import BiocnnError
from biocnn.io.mrc import ViewSpec
from biocnn.models.registry import create_model, list_models, model_spec
from biocnn.runtime import resolve_device

__all__ = [
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "unwrap",
    "Classifier",
    "load_classifier",
    "MAX_BOX",
    "MAX_PARAMETERS",
]

#: Largest image box a checkpoint may ask for (a 4k box is already a whole micrograph).
MAX_BOX = 4096
#: Largest parameter count a checkpoint may ask for.
MAX_PARAMETERS = 200_000_000
#: Largest single tensor of a state_dict, in elements.
_MAX_TENSOR = MAX_PARAMETERS


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Atomically save ``meta`` + model spec + ``state_dict`` as a plain dict (``weights_only``-safe).

    ``train_state`` (optimizer, scheduler, RNG states, epoch/step, history: what
    :func:`biocnn.engine.fit` needs to resume) is stored as given under ``"train_state"``.
    """
    plain = unwrap(model)
    spec = model_spec(plain)
    ckpt = {
        **to_plain(meta),
        "model_name": spec["name"],
        "model_kwargs": to_plain(spec["kwargs"]),
        "state_dict": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
        "biocnn_version": __version__,
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def _check_meta(path: Path, ckpt: Any) -> None:
    """Refuse, in one line, any field that would crash or allocate when the model is built."""
    if not isinstance(ckpt, dict) or not {"model_name", "model_kwargs", "state_dict"} <= set(ckpt):
        raise BiocnnError(f"{path}: not a biocnn checkpoint (no model_name/state_dict)")
    name, kwargs, state = ckpt["model_name"], ckpt["model_kwargs"], ckpt["state_dict"]
    if not isinstance(name, str) or name not in list_models():
        raise BiocnnError(f"{path}: unknown model {name!r} (known: {', '.join(list_models())})")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BiocnnError(f"{path}: model_kwargs must be a dict of options, "
                          f"not {type(kwargs).__name__}")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise BiocnnError(f"{path}: state_dict must map names to tensors")
    total = 0
    for key, value in state.items():
        if value.numel() > _MAX_TENSOR:
            raise BiocnnError(f"{path}: state_dict[{key!r}] has {value.numel():,} elements")
        total += value.numel()
    if total > MAX_PARAMETERS:
        raise BiocnnError(f"{path}: {total:,} weights (more than {MAX_PARAMETERS:,})")
    for key in ("num_classes", "in_chans", "img_size"):
        v = kwargs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000):
            raise BiocnnError(f"{path}: model_kwargs[{key!r}] = {v!r} is not a sensible count")
    widths = kwargs.get("widths")
    if widths is not None and (not isinstance(widths, list | tuple) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 8192 for w in widths)):
        raise BiocnnError(f"{path}: model_kwargs['widths'] = {widths!r} is not a list of "
                          "channel counts (1-8192)")
    if "class_names" in ckpt:
        names = ckpt["class_names"]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise BiocnnError(f"{path}: class_names must be a list of strings")
        k = kwargs.get("num_classes")
        if k is not None and k != len(names):
            raise BiocnnError(f"{path}: {len(names)} class names for a {k}-class model")
    pre = ckpt.get("preprocess")
    if pre is not None:
        box = pre.get("box") if isinstance(pre, dict) else None
        if box is not None and (isinstance(box, bool) or not isinstance(box, int)
                                or not 8 <= box <= MAX_BOX):
            raise BiocnnError(f"{path}: preprocessing box {box!r} is outside 8-{MAX_BOX} px")
        apix = pre.get("apix") if isinstance(pre, dict) else None
        if apix is not None and (not isinstance(apix, int | float) or not math.isfinite(apix)
                                 or apix < 0):
            raise BiocnnError(f"{path}: preprocessing pixel size {apix!r} is not >= 0")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The validated checkpoint dict (tensors on the CPU), nothing built yet."""
    path = Path(path)
    if not path.is_file():
        raise BiocnnError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  a damaged file can fail anywhere in the unpickler
        raise BiocnnError(f"{path}: not a readable biocnn checkpoint (damaged, truncated or "
                          "not a PyTorch file)") from None
    _check_meta(path, ckpt)
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` and rebuild its model (eval mode).

    Raises :class:`BiocnnError` for a missing, corrupt or foreign file, fields that do not
    make sense, or weights that do not fit the recorded model.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for a hostile size
            probe = create_model(ckpt["model_name"], **dict(ckpt["model_kwargs"]))
        size = sum(p.numel() for p in probe.parameters())
    except BiocnnError as exc:
        raise BiocnnError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  any model constructor error from stored options
        raise BiocnnError(f"{path}: cannot build model {ckpt['model_name']!r} from its "
                          f"options ({type(exc).__name__}: {str(exc)[:100]})") from None
    if size > MAX_PARAMETERS:
        raise BiocnnError(f"{path}: the model would have {size:,} parameters")
    model = create_model(ckpt["model_name"], **dict(ckpt["model_kwargs"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0].rstrip(":")[:160]
        saved = ckpt.get("biocnn_version")
        hint = (f"; saved by biocnn {saved}, this is {__version__}: retrain, or predict with "
                f"biocnn {saved}" if saved and saved != __version__ else "")
        raise BiocnnError(
            f"{path}: weights do not fit model {ckpt['model_name']!r} ({first}{hint})") from None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), ckpt


@dataclass
class Classifier:
    """A trained model with everything needed to repeat its preprocessing.

    ``standardize`` is the same input module training applied on the device, built from
    the checkpoint's preprocessing record.
    """

    path: Path
    model: nn.Module
    class_names: list[str]
    preprocess: PreprocessConfig
    views: ViewSpec
    device: torch.device
    meta: dict[str, Any]
    standardize: Standardize = field(init=False)

    def __post_init__(self) -> None:
        self.standardize = self.preprocess.standardizer().to(self.device)

    @property
    def box(self) -> int:
        """Input size in pixels: images are ``(B, 1, box, box)``."""
        return int(self.preprocess.box)  # type: ignore[arg-type]

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """``(B, 1, box, box)`` resampled, unstandardised images -> ``(B, K)`` float32 logits."""
        return self.model(self.standardize(images.to(self.device))).float()


def load_classifier(path: str | os.PathLike, device: str = "auto") -> Classifier:
    """Load a checkpoint written by ``biocnn train`` (model in eval mode on ``device``).

    Raises
    ------
    BiocnnError
        Missing, corrupt or foreign checkpoint (e.g. an MNIST baseline one, which has no
        recorded preprocessing), or weights that do not fit the recorded model.
    """
    path = Path(path)
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(path, dev)
    missing = [k for k in ("class_names", "preprocess", "views") if k not in ckpt]
    if missing:
        raise BiocnnError(f"{path}: not a `biocnn train` checkpoint (no {missing[0]} recorded)")
    try:
        pre = PreprocessConfig.from_dict(ckpt["preprocess"])
        views = ViewSpec.from_dict(ckpt["views"])
    except (BiocnnError, TypeError, AttributeError) as exc:
        raise BiocnnError(f"{path}: bad preprocessing record ({exc})") from None
    if not pre.is_resolved:
        raise BiocnnError(f"{path}: the recorded preprocessing has no box/pixel size")
    return Classifier(path, model, list(ckpt["class_names"]), pre, views, dev, ckpt)
