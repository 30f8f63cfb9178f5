"""biocnn.tasks.train: config, model checks, lazy vs in-memory training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.config import CryoTrainConfig, TrainConfig, resolve, to_plain
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.tasks.train import (
    MODEL_DEFAULTS,
    build_classifier,
    config_toml,
    run_train,
)


def test_config_is_a_train_config_with_cryo_defaults() -> None:
    cfg = CryoTrainConfig()
    assert isinstance(cfg, TrainConfig)
    assert (cfg.model, cfg.epochs, cfg.patience, cfg.val_fraction, cfg.augment) == (
        "invariant_d4_m", 15, 5, 0.15, True)
    cryo = {"canonical": True, "canonical_blur": 2.0, "phase": "centroid", "max_filter": True}
    assert cfg.model_kwargs == {} and MODEL_DEFAULTS["invariant_d4_m"] == cryo
    assert MODEL_DEFAULTS["invariant_m"] == {"widths": [16, 32, 64, 128], **cryo}
    assert cfg.preprocess_config().box is None and cfg.view_spec().slices == "central"


def test_shipped_config_resolves() -> None:
    path = Path(__file__).parents[1] / "configs" / "cryo_train.toml"
    cfg = resolve(CryoTrainConfig(), path, {"epochs": 2})
    assert cfg.epochs == 2 and cfg.model == "invariant_d4_m" and cfg.balance_classes
    assert cfg.model_kwargs == {"canonical": True, "canonical_blur": 2.0, "phase": "centroid",
                                "max_filter": True}
    spec = build_classifier(cfg.model, 3, 32, cfg.model_kwargs).spec["kwargs"]
    assert spec == {"num_classes": 3, "in_chans": 1, **cfg.model_kwargs}


def test_resolve_from_toml_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('epochs = 3\nmodel_kwargs = {widths = [8, 16]}\nslices = 4\nbox = 32\n')
    cfg = resolve(CryoTrainConfig(), path, {"epochs": 7, "lr": None})
    assert cfg.epochs == 7 and cfg.model_kwargs == {"widths": [8, 16]} and cfg.box == 32
    assert cfg.view_spec().slices == 4
    with pytest.raises(BiocnnError, match="unknown config key"):
        resolve(CryoTrainConfig(), None, {"epoch": 3})


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
scalars = st.one_of(
    st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6),
                       st.one_of(scalars, st.lists(st.integers(0, 99), max_size=4)), max_size=4),
       st.text(max_size=20), st.integers(1, 500))
def test_config_toml_round_trips(kwargs: dict, data: str, epochs: int) -> None:
    cfg = CryoTrainConfig(data=data, epochs=epochs, model_kwargs=kwargs, out="ignored")
    loaded = tomllib.loads(config_toml(cfg))
    plain = {k: v for k, v in to_plain(cfg).items() if v is not None and k not in ("out", "resume")}
    assert loaded == plain


def test_build_classifier_checks_the_box() -> None:
    model = build_classifier("invariant", 4, 16, {"widths": [4, 8]})
    assert model.training and model.spec["kwargs"]["widths"] == [4, 8]
    with pytest.raises(BiocnnError, match="cannot take 16x16"):
        build_classifier("lenet_fc", 4, 16, {})
    with pytest.raises(BiocnnError, match="bad options"):
        build_classifier("invariant", 4, 16, {"widths": [4], "depths": [1, 1]})
    with pytest.raises(BiocnnError, match="unknown model"):
        build_classifier("resnet", 4, 16, {})


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    c = np.arange(16) - 8
    r = np.hypot(c[:, None], c[None, :])
    for name, mask in (("small", r < 3), ("large", r < 6)):
        data = mask + 0.2 * rng.standard_normal((10, 16, 16))
        write_mrc(root / name / "s.mrcs", data.astype(np.float32), apix=1.0, is_stack=True)
    return root


def test_lazy_and_in_memory_training_agree(tmp_path: Path) -> None:
    """Streaming from the MRC files gives the same run as preprocessing into memory (one
    batch per epoch and no augmentation, so the two loaders' sample orders do not matter)."""
    maps = _folder(tmp_path / "maps")
    histories = []
    for preload, name in ((2.0, "mem"), (0.0, "lazy")):
        cfg = CryoTrainConfig(
            data=str(maps), out=str(tmp_path / name), epochs=2, batch_size=32, augment=False,
            model="invariant",
            model_kwargs={"widths": [4, 8]}, device="cpu", progress=False, preload_gb=preload,
            val_fraction=0.2,
        )
        result = run_train(cfg, log=lambda _: None)
        assert result.class_names == ["large", "small"]
        assert result.summary["val_images"] == 4 and result.summary["max_shift"] == 1.3
        assert result.fit.best_epoch in (1, 2)
        histories.append([json.loads(s) for s in (tmp_path / name / "metrics.jsonl").open()])
    for a, b in zip(*histories, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"])


def test_run_train_needs_data_and_out(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="folder of class folders"):
        run_train(CryoTrainConfig(out=str(tmp_path / "x")))
    with pytest.raises(BiocnnError, match="--out"):
        run_train(CryoTrainConfig(data=str(tmp_path)))
    with pytest.raises(BiocnnError, match="max_shift"):
        run_train(CryoTrainConfig(data=str(_folder(tmp_path / "m")), out=str(tmp_path / "r"),
                                  max_shift=-1, progress=False), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_model_kwargs_lie_over_the_model_defaults(tmp_path: Path) -> None:
    maps = _folder(tmp_path / "maps")
    cfg = CryoTrainConfig(data=str(maps), out=str(tmp_path / "run"), epochs=1, device="cpu",
                          progress=False, model="invariant_m", model_kwargs={"dropout": 0.2})
    run_train(cfg, log=lambda _: None)
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "invariant_m"
    assert ckpt["model_kwargs"]["widths"] == [16, 32, 64, 128]
    assert ckpt["config"]["model_kwargs"] == {"widths": [16, 32, 64, 128], "canonical": True,
                                              "canonical_blur": 2.0, "phase": "centroid",
                                              "max_filter": True, "dropout": 0.2}


def test_stack_or_volume_override_reaches_the_views() -> None:
    from typer.testing import CliRunner

    from biocnn.cli import app

    assert CryoTrainConfig(as_volume=False).view_spec().as_volume is False
    assert CryoTrainConfig().view_spec().as_volume is None
    assert "--volume" in CliRunner().invoke(app, ["train", "--help"]).output
