"""Plain dataclass configs, TOML loading and CLI overrides.

Every command resolves its config as ``defaults ← --config file.toml ← explicit CLI flags``
and saves the result beside its outputs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from biocnn.errors import BiocnnError, OptionError

__all__ = [
    "TrainConfig", "CryoTrainConfig", "PredictConfig", "EvaluateConfig", "SelectConfig",
    "CalibrateConfig", "DictConfig", "option", "describe", "load_toml", "merge", "resolve",
    "to_plain", "run_metadata",
]

T = TypeVar("T")


def option(default: Any = None, help: str = "", *, shown: str | None = None,  # noqa: A002
           factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help text: the one place a command's option is described.

    ``shown`` replaces the default in ``--help`` (for defaults resolved at run time);
    ``""`` shows none (a required value, or an output written only when asked for).
    """
    meta = {"help": help, "shown": shown}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(cls: type, name: str) -> str:
    """``--help`` text of field ``name`` of dataclass ``cls``: its help and its default."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    shown = f.metadata.get("shown")
    if shown is None:
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
    help_text = f.metadata.get("help", "")
    return f"{help_text} (default: {shown})" if shown else help_text


#: Resampling of the training augmentation: bilinear (blurs) or band-limited Fourier
#: shifts and shears (:class:`biocnn.augment.Augment`).
INTERPOLATIONS = ("bilinear", "fourier")
#: What a training shift brings in at the edge.
FILLS = ("zeros", "circular")


@dataclass
class TrainConfig:
    """Options of the one training loop (:func:`biocnn.engine.fit`)."""

    epochs: int = option(10, "Epochs.")
    batch_size: int = option(128, "Images per step (per process under torchrun).")
    lr: float = option(2e-3, "Peak learning rate.")
    weight_decay: float = option(0.05, "AdamW/SGD weight decay (not on norms and biases).")
    optimizer: str = option("adamw", "adamw or sgd.")
    momentum: float = option(0.9, "SGD momentum.")
    warmup_epochs: float = option(0.3, "Linear warm-up, then cosine decay.")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy.")
    patience: int = option(0, "Stop after this many epochs without a lower validation "
                           "loss; 0 = off.")
    seed: int = option(0, "Random seed (data order, initialisation, augmentation).")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    num_workers: int = option(0, "Reader processes; 0 reads in the training process (fastest "
                              "on small machines).")
    amp: bool = option(False, "bf16 autocast (fast on recent GPUs and CPUs with bf16).")
    compile: bool = option(False, "torch.compile the model (long first epoch).")
    channels_last: bool = option(False, "Channels-last memory format.")
    balance_classes: bool = option(False, "Sample every class equally often.")
    # precise BatchNorm: running statistics lag the weights (BENCHMARKS.md)
    bn_recalibrate: int = option(256, "Re-estimate BatchNorm statistics on this many "
                                 "un-augmented training images before they are used; 0 = off.")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "must be >= 0"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "must be >= 0"),
            ("optimizer", self.optimizer in ("adamw", "sgd"), "use adamw or sgd"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("warmup_epochs", math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
             "must be >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("patience", self.patience >= 0, "must be >= 0 (0 = off)"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("bn_recalibrate", self.bn_recalibrate >= 0, "must be >= 0 (0 = off)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise OptionError(name, getattr(self, name), why)


@dataclass
class CryoTrainConfig(TrainConfig):
    """Options of ``biocnn train`` (also its TOML keys): the loop options of
    :class:`TrainConfig` plus data, preprocessing, model and augmentation.

    ``box``, ``apix`` and ``max_shift`` left None are resolved from the data and
    ``model_kwargs`` is laid over :data:`MODEL_DEFAULTS`; the saved config holds the
    resolved values.
    """

    data: str = option("", "Folder of class folders, or a STAR file.")
    label_column: str = option("rlnClassNumber", "STAR column with the class.")
    input_apix: float | None = option(None, "Pixel size in Å of every input image, over the "
                                      "headers and the STAR file.", shown="read from them")
    box: int | None = option(None, "Box in px.", shown="the largest input image")
    apix: float | None = option(None, "The model's pixel size in Å; 0 = ignore pixel sizes.",
                                shown="the coarsest that fits the box")
    mask_radius: float = option(0.4, "Background mask radius: < 1 a fraction of the box, "
                                "else px.")
    invert: bool = option(False, "Invert the contrast.")
    norm_region: str = option("background", "Pixels whose mean/std standardise each image: "
                              "background (outside the mask; particles) or image (all; masked "
                              "class averages).")
    lowpass: float = option(0.0, "Low-pass: <= 1 a fraction of Nyquist, > 1 a resolution in Å; "
                            "0 = off.")
    slice_axis: str = option("z", "Volumes: slice/projection axis z, y or x.")
    slices: str = option("central", "Volumes: central, all, none or a count.")
    project: bool = option(False, "Volumes: also use the projection along the axis.")
    as_volume: bool | None = option(None, "Read 3D files as volumes (--volume) or stacks "
                                    "(--stack).", shown="from the header and name")
    model: str = option("invariant_d4_m", "Registered model (biocnn.list_models()).")
    model_kwargs: dict[str, Any] = option(
        help="JSON object of model options over the model's defaults (invariant_d4_m and "
        "invariant_m: {\"canonical\": true, \"canonical_blur\": 2.0, \"phase\": "
        "\"centroid\", \"max_filter\": true}, invariant_m also {\"widths\": [16, 32, 64, "
        "128]}; registered: not canonical, phase norm, no max filter).",
        factory=dict, shown="{}")
    val_fraction: float = option(0.15, "Validation fraction per class.")
    augment: bool = option(True, "Random shift, in-plane rotation and flips.")
    interp: str = option("fourier", "Augmentation resampling: fourier (band-limited, no blur: "
                         "images keep their noise spectrum) or bilinear.")
    fill: str = option("zeros", "What a training shift brings in at the edge: zeros (as a "
                       "particle off-centre in its box, and as evaluate's shifts) or circular.")
    max_shift: float | None = option(None, "Largest training shift in px.",
                                     shown="8 % of the box")
    preload_gb: float = option(2.0, "Hold the resampled images in memory up to this size; "
                               "0 = always read from the files.")
    out: str = option("", "Run folder.", shown="runs/train-<timestamp>")
    resume: str = option("", "Continue the interrupted run in this folder (its saved config "
                         "is used).", shown="none")
    # loop defaults sized for ~2000 images of 64 px on a 2-core CPU
    epochs: int = option(15, "Epochs.")
    patience: int = option(5, "Stop after this many epochs without a lower validation "
                           "loss; 0 = off.")
    batch_size: int = option(64, "Images per step (per process under torchrun).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.val_fraction < 1:
            raise OptionError("val_fraction", self.val_fraction, "must be in [0, 1)")
        if not (math.isfinite(self.preload_gb) and self.preload_gb >= 0):
            raise OptionError("preload_gb", self.preload_gb, "must be >= 0 (0 = never)")
        if self.max_shift is not None and not (math.isfinite(self.max_shift) and self.max_shift >= 0):
            raise OptionError("max_shift", self.max_shift, "must be >= 0")
        if self.interp not in INTERPOLATIONS:
            raise OptionError("interp", self.interp, "use fourier or bilinear")
        if self.fill not in FILLS:
            raise OptionError("fill", self.fill, "use zeros or circular")

    def preprocess_config(self) -> Any:
        """The (unresolved) :class:`~biocnn.data.PreprocessConfig` asked for."""
        from biocnn.data.preprocess import PreprocessConfig

        return PreprocessConfig(box=self.box, apix=self.apix, mask_radius=self.mask_radius,
                                invert=self.invert, lowpass=self.lowpass,
                                norm_region=self.norm_region)

    def view_spec(self) -> Any:
        """Which 2D views volumes yield (:class:`~biocnn.io.mrc.ViewSpec`)."""
        from biocnn.io.mrc import ViewSpec

        return ViewSpec(slice_axis=self.slice_axis, slices=self.slices, project=self.project,
                        as_volume=self.as_volume)


@dataclass
class PredictConfig:
    """Options of ``biocnn predict`` (also its TOML keys); :func:`biocnn.tasks.run_predict`.

    Volume views left None are the checkpoint's (as in training).
    """

    inputs: tuple[str, ...] = option((), "MRC files, folders, globs, STAR or cryoSPARC .cs files.",
                                     shown="")
    model: str = option("", "Checkpoint from `biocnn train` (best.pt).", shown="")
    csv: str | None = option(None, "Write one row per image: index, image, predicted, "
                             "p_<class>...", shown="")
    star: str | None = option(None, "Write a RELION 3.1+ STAR file: the input rows, a full optics "
                              "table (unknown voltage/Cs/amplitude contrast: 300 kV/2.7 mm/0.1) and "
                              "the predictions in new biocnn* columns.", shown="")
    relion_project: str = option(".", "RELION project folder; STAR image names are relative to it.",
                                 shown="the current folder")
    select: str | None = option(None, "Class (name or 1-based number) for --out-stack / --out-cs.",
                                shown="")
    min_probability: float = option(0.0, "--select: keep images at least this sure.")
    out_stack: str | None = option(None, "Write the original images of --select as an MRC stack, "
                                   "and their STAR rows beside it (.star).", shown="")
    out_cs: str | None = option(None, "Write the --select rows of a .cs input as a .cs file "
                                "cryoSPARC can import.", shown="")
    cs_project: str | None = option(None, "cryoSPARC project folder that .cs blob/path values are "
                                    "relative to.", shown="")
    apix: float | None = option(None, "Pixel size in Å of every input image (instead of the "
                                "STAR/.cs/header value).", shown="")
    as_volume: bool | None = option(None, "Read 3D MRC files as volumes / as image stacks.",
                                    shown="from the header and name")
    overwrite: bool = option(False, "Replace existing output files.")
    cam: str | None = option(None, "Write a gallery of class-activation maps (PNG).", shown="")
    cam_count: int = option(16, "Images in the --cam gallery.")
    tta: bool = option(False, "Average over the 8 rotations/flips.")
    slice_axis: str | None = option(None, "Volumes: z, y or x.", shown="as in training")
    slices: str | int | None = option(None, "Volumes: central, all, none or a count.",
                                      shown="as in training")
    project: bool | None = option(None, "Volumes: also the projection.", shown="as in training")
    batch_size: int = option(256, "Images per batch.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    num_workers: int = option(0, "DataLoader worker processes.")
    amp: bool = option(False, "bf16 mixed precision.")
    progress: bool = option(True, "Show a progress bar.")


@dataclass
class EvaluateConfig:
    """Options of ``biocnn evaluate`` (also its TOML keys); :func:`biocnn.tasks.run_evaluate`."""

    data: str = option("", "Folder of class folders, or a STAR file.", shown="")
    model: str = option("", "Checkpoint from `biocnn train`.", shown="")
    label_column: str = option("rlnClassNumber", "STAR column with the class.")
    shifts: tuple[float, ...] = option((), "Shift lengths in px, e.g. 0,2,4,8.",
                                       shown="0, 2, 4, ... up to box/4")
    consistency_shift: int | None = option(None, "Largest shift of the consistency test in px.",
                                           shown="8% of the box")
    angles: tuple[float, ...] = option((), "Rotation angles in degrees, e.g. 0,45,90.",
                                       shown="0,30,...,180")
    tta: bool = option(False, "Average over the 8 rotations/flips.")
    apix: float | None = option(None, "Pixel size in Å of every image (instead of the STAR/header "
                                "value).", shown="")
    as_volume: bool | None = option(None, "Read 3D MRC files as volumes / as image stacks.",
                                    shown="from the header and name")
    overwrite: bool = option(False, "Replace a non-empty output folder.")
    batch_size: int = option(256, "Images per batch.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    num_workers: int = option(0, "DataLoader worker processes.")
    amp: bool = option(False, "bf16 mixed precision.")
    seed: int = option(0, "Seed of the random shift directions.")
    out: str = option("", "Output folder.", shown="runs/evaluate-<timestamp>")
    progress: bool = option(True, "Show a progress bar.")


@dataclass
class SelectConfig:
    """Options of ``biocnn select``; :func:`biocnn.tasks.select.run_select`."""

    inputs: tuple[str, ...] = option((), "RELION 2D job folder or its run_itNNN_model.star, a "
                                     "cryoSPARC class-averages .cs, or MRC stacks of class averages.",
                                     shown="")
    model: str = option("", "Checkpoint from `biocnn train` with a good/junk pair of classes.",
                        shown="the selector shipped with biocnn")
    out: str = option("", "Output folder (good.mrcs, bad.mrcs, classes.csv, selection.json, "
                      "particles.star, report.html).", shown="")
    threshold: float | None = option(None, "Keep classes with P(good) >= this.",
                                     shown="the checkpoint's, else 0.5")
    good_class: str = option("good", "Name of the model's good class.")
    apix: float | None = option(None, "Pixel size in Å of the class averages (instead of the "
                                "header / model.star value).", shown="")
    cs_project: str | None = option(None, "cryoSPARC project folder of .cs blob paths.", shown="")
    overwrite: bool = option(False, "Replace an existing output folder.")
    batch_size: int = option(256, "Images per batch.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    progress: bool = option(False, "Show a progress bar.")


@dataclass
class CalibrateConfig:
    """Options of ``biocnn calibrate``; :func:`biocnn.tasks.calibrate.run_calibrate`."""

    model: str = option("", "Checkpoint from `biocnn train` (best.pt).", shown="")
    data: str = option("", "Labelled held-out data: folder per class or STAR file.", shown="")
    out: str = option("", "Calibrated checkpoint to write.", shown="")
    good_class: str = option("good", "The class whose probability is thresholded.")
    batch_size: int = option(256, "Images per batch.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    overwrite: bool = option(False, "Replace an existing output file.")
    progress: bool = option(True, "Show a progress bar.")


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


class DictConfig:
    """``to_dict`` / ``from_dict`` of a dataclass saved in checkpoints and ``run.json``.

    A subclass sets ``_what`` (unannotated, so not a field), the name its unknown keys are
    reported under; its own ``__post_init__`` validates the values.
    """

    _what = "config"

    def to_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-friendly dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`BiocnnError`."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            what = cls._what  # type: ignore[attr-defined]
            raise BiocnnError(f"unknown {what} option(s): {', '.join(unknown)}")
        return cls(**d)


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
