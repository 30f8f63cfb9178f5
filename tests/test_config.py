"""Config resolution: defaults ← TOML ← CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from biocnn import BiocnnError
from biocnn.config import TrainConfig, merge, resolve, to_plain


def test_resolve_order(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("epochs = 7\nlr = 0.01\namp = true\n")
    cfg = resolve(TrainConfig(), f, {"lr": 0.5, "epochs": None})
    assert (cfg.epochs, cfg.lr, cfg.amp) == (7, 0.5, True)


def test_merge_rejects_unknown_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="unknown config key 'epoch'"):
        merge(TrainConfig(), {"epoch": 3})
    with pytest.raises(BiocnnError, match="cannot use"):
        merge(TrainConfig(), {"epochs": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(BiocnnError, match="not valid TOML"):
        resolve(TrainConfig(), bad, {})
    with pytest.raises(BiocnnError, match="not found"):
        resolve(TrainConfig(), tmp_path / "none.toml", {})


def test_to_plain_is_json_safe() -> None:
    plain = to_plain({"p": Path("/x"), "t": (1, 2), "cfg": TrainConfig()})
    assert plain["p"] == "/x" and plain["t"] == [1, 2] and plain["cfg"]["epochs"] == 10


def test_command_tables_win_over_the_top_level(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('epochs = 3\nlr = 0.1\n[train]\nepochs = 7\n[predict]\nbatch_size = 1\n')
    cfg = resolve(TrainConfig(), f, {}, "train")
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (7, 0.1, TrainConfig().batch_size)
    assert resolve(TrainConfig(), f, {"epochs": 9}, "train").epochs == 9
    assert resolve(TrainConfig(), f, {}, "evaluate").epochs == 3
    f.write_text('[train]\nbogus = 1\n')
    with pytest.raises(BiocnnError, match="unknown config key 'bogus'"):
        resolve(TrainConfig(), f, {}, "train")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("lr", -1.0, "must be >= 0"), ("label_smoothing", 2.0, "must be in"), ("epochs", 0, ">= 1"),
    ("batch_size", 0, ">= 1"), ("weight_decay", -1.0, ">= 0"), ("num_workers", -1, ">= 0"),
    ("patience", -1, ">= 0"), ("momentum", 5.0, "must be in"), ("optimizer", "foo", "adamw or sgd"),
])
def test_loop_options_are_checked_when_set(field: str, value, why: str) -> None:
    from biocnn.errors import OptionError

    with pytest.raises(OptionError, match=f"^{field} .*{why}"):
        TrainConfig(**{field: value})
    with pytest.raises(OptionError, match=f"^{field} "):
        merge(TrainConfig(), {field: value})


def test_dict_config_round_trips_and_names_unknown_keys() -> None:
    import dataclasses

    from biocnn.config import DictConfig
    from biocnn.errors import BiocnnError

    @dataclasses.dataclass(frozen=True)
    class Box(DictConfig):
        _what = "box"

        size: int = 8
        sides: tuple[int, ...] = (1, 2)

        def __post_init__(self) -> None:
            if self.size < 1:
                raise BiocnnError("size must be >= 1")

    assert [f.name for f in dataclasses.fields(Box)] == ["size", "sides"]
    assert Box.from_dict(Box(size=3).to_dict()) == Box(size=3)
    with pytest.raises(BiocnnError, match=r"^unknown box option\(s\): a, z$"):
        Box.from_dict({"z": 1, "a": 2, "size": 3})
    with pytest.raises(BiocnnError, match="size must be"):  # the class's own checks still run
        Box.from_dict({"size": 0})


def test_augmentation_interpolation_is_checked_when_set() -> None:
    from biocnn.config import CryoTrainConfig
    from biocnn.errors import OptionError

    assert CryoTrainConfig().interp == "fourier"
    with pytest.raises(OptionError, match="^interp cubic: use fourier or bilinear"):
        CryoTrainConfig(interp="cubic")
    with pytest.raises(OptionError, match="^fill zero: use zeros or circular"):
        CryoTrainConfig(fill="zero")
