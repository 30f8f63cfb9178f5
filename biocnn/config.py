"""Plain dataclass configs, TOML loading and CLI overrides.

Every command resolves its config as ``defaults ← --config file.toml ← explicit CLI flags``
and saves the result beside its outputs.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from biocnn.errors import BiocnnError

__all__ = ["TrainConfig", "load_toml", "merge", "resolve", "to_plain", "run_metadata"]

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Options of the one training loop (:func:`biocnn.engine.fit`)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    amp: bool = False  # bf16 autocast
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    balance_classes: bool = False  # sample classes equally often
    # re-estimate BatchNorm statistics on this many (un-augmented) training images with the
    # epoch's final weights before they are used (validation, checkpoints, the end);
    # 0 = keep the running averages of training
    bn_recalibrate: int = 256
    progress: bool = True


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file into a dict (one-line error if missing or malformed)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise BiocnnError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise BiocnnError(f"config file {path} is not valid TOML: {exc}") from None


def merge(cfg: T, overrides: dict[str, Any]) -> T:
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied (``None`` values skipped).

    Values are coerced to the type of the field's current value (int, float, bool, str,
    tuple/list); unknown keys are a :class:`BiocnnError`.
    """
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        key = key.replace("-", "_")
        if key not in fields:
            raise BiocnnError(f"unknown config key {key!r} for {type(cfg).__name__}")
        current = getattr(cfg, key)
        try:
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, (int, float)) and not isinstance(value, bool):
                value = type(current)(value)
            elif isinstance(current, tuple):
                value = tuple(value)
        except (TypeError, ValueError):
            raise BiocnnError(f"config key {key!r}: cannot use {value!r}") from None
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


#: Commands whose table (``[train]``, ...) a shared TOML file may hold.
COMMANDS = ("baseline", "simulate", "train", "predict", "evaluate", "select")


def resolve(cfg: T, config_file: str | os.PathLike | None, cli: dict[str, Any],
            command: str | None = None) -> T:
    """Defaults ← TOML file ← CLI flags (flags left at ``None`` keep the file's value).

    The TOML file holds keys at top level and/or in a table named after the command
    (``[train]``), which wins over the top level; other commands' tables are ignored, so
    one file can configure several commands. Any other unknown key is an error.
    """
    if config_file is not None:
        data = load_toml(config_file)
        top = {k: v for k, v in data.items() if k not in COMMANDS}
        cfg = merge(cfg, top)
        table = data.get(command) if command else None
        if table is not None:
            if not isinstance(table, dict):
                raise BiocnnError(f"config file {config_file}: [{command}] must be a table")
            cfg = merge(cfg, table)
    return merge(cfg, cli)


def to_plain(obj: Any) -> Any:
    """Convert dataclasses, paths, tuples and numpy scalars into JSON/``weights_only``-safe values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def run_metadata(config: Any = None) -> dict[str, Any]:
    """What every run saves beside its outputs: version, command line, resolved config."""
    import torch

    from biocnn import __version__

    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {
        "biocnn_version": __version__,
        "command": sys.argv,
        "time": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "config": cfg,
    }
