"""A timm-style model registry: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from biocnn.errors import BiocnnError

__all__ = ["register_model", "create_model", "list_models", "model_spec"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model factory under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models, optionally filtered by a glob ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name
        A name from :func:`list_models`.
    num_classes
        Number of output logits ``K``.
    in_chans
        Input channels ``C`` of images ``(B, C, H, W)``.
    **kwargs
        Model-specific options (e.g. ``img_size`` for ``lenet_fc``, ``widths`` for the
        invariant family).

    Returns
    -------
    nn.Module
        Maps ``(B, C, H, W)`` to logits ``(B, K)``. Its ``spec`` attribute holds
        ``{"name", "kwargs"}``, enough to rebuild it from a checkpoint.
    """
    if name not in _REGISTRY:
        raise BiocnnError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs = {"num_classes": int(num_classes), "in_chans": int(in_chans), **kwargs}
    try:
        model = _REGISTRY[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise BiocnnError(f"bad options for model {name!r}: {exc}") from exc
    model.spec = {"name": name, "kwargs": kwargs}
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The ``{"name", "kwargs"}`` that :func:`create_model` attached to ``model``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model was not built by biocnn.create_model; it has no spec")
    return spec
