"""Every registered model: shapes, registry behaviour, and exact shift invariance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn import BiocnnError, create_model, list_models
from biocnn.models import model_spec
from biocnn.models.layers import APS2d

#: Small options per registered model, so the zoo test stays fast; a model missing here is
#: tested at its registered defaults.
_SMALL: dict[str, dict] = {
    "invariant": {"widths": (8, 16, 16)},
    "invariant_blurpool": {"widths": (8, 16, 16)},
    "gap_zero_pad": {"widths": (8, 16, 16)},
    "invariant_m": {"widths": (8, 8, 16, 16)},
    "invariant_d4": {"widths": (4, 6, 8)},
    "invariant_d4_m": {"widths": (2, 4, 4, 6, 6)},
}


def _build(name: str, size: int, chans: int, classes: int = 5) -> torch.nn.Module:
    kw = {"img_size": size} if name == "lenet_fc" else _SMALL.get(name, {})
    return create_model(name, num_classes=classes, in_chans=chans, **kw)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("chans", [1, 3])
def test_every_registered_model(name: str, chans: int) -> None:
    """timm style: builds, forward shape at two sizes, backward reaches every parameter, and
    the spec rebuilds the same model through create_model."""
    torch.manual_seed(0)
    for size in (28, 64):
        model = _build(name, size, chans)
        out = model(torch.randn(2, chans, size, size))
        assert out.shape == (2, 5)
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        spec = model_spec(model)
        assert spec["name"] == name
        rebuilt = create_model(spec["name"], **spec["kwargs"])
        rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
        model.eval()
        rebuilt.eval()
        x = torch.randn(3, chans, size, size)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("chans", [1, 3])
def test_channels_last_computes_the_same(name: str, chans: int) -> None:
    """Channels-last input and 4-D weights as ``fit`` makes them (``--channels-last``, the
    MNIST baseline; one channel included): the same logits and gradients as the default
    layout, in training and inference, and the input gradient keeps the layout (a mixed one
    makes the norm and ReLU backward slow) except in the D4 models, which compute NCHW.
    In float64: float32 kernels round differently per layout, and BatchNorm's backward on
    a batch of 4 amplifies that to 1e-3."""
    import copy

    from biocnn.engine import _as_channels_last

    torch.manual_seed(0)
    for size in (28, 30):
        model = _build(name, size, chans).double()
        cl = copy.deepcopy(model)
        for p in cl.parameters():
            if p.dim() == 4:  # as the engine: the group convs' 5-D weights stay as they are
                p.data = _as_channels_last(p.data)
        x = torch.randn(4, chans, size, size, dtype=torch.float64)
        xc = _as_channels_last(x).requires_grad_(True)
        torch.manual_seed(1)  # the same dropout masks
        out = model(x.requires_grad_(True))
        torch.manual_seed(1)
        out_cl = cl(xc)
        torch.testing.assert_close(out_cl, out, rtol=1e-9, atol=1e-9)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, [x, *model.parameters()], g)
        grads_cl = torch.autograd.grad(out_cl, [xc, *cl.parameters()], g)
        for a, b in zip(grads_cl, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        if not name.startswith("invariant_d4"):
            assert grads_cl[0].is_contiguous(memory_format=torch.channels_last)
        model.eval()
        cl.eval()
        with torch.no_grad():
            torch.testing.assert_close(cl(xc), model(x), rtol=1e-9, atol=1e-9)


def test_lenet_matches_mxnet_parameter_count() -> None:
    model = create_model("lenet_fc", num_classes=10, in_chans=1, img_size=28)
    assert sum(p.numel() for p in model.parameters()) == 431_080


def test_registry_lists_the_zoo() -> None:
    names = list_models()
    assert {"lenet_fc", "invariant", "gap_zero_pad", "invariant_blurpool", "invariant_m",
            "invariant_d4", "invariant_d4_m"} <= set(names)
    assert names == sorted(names)
    assert list_models("invariant*") == [n for n in names if n.startswith("invariant")]


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(BiocnnError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(BiocnnError, match="bad options"):
        create_model("invariant", no_such_option=1)
    with pytest.raises(BiocnnError, match="img_size >= 16"):
        create_model("lenet_fc", img_size=12)


def test_invariant_head_sees_no_position() -> None:
    model = create_model("invariant", widths=(8, 16))
    assert isinstance(model.head[-1], torch.nn.Linear)
    assert model.head[-1].in_features == 16 * 2  # avg + max pooled channels, nothing spatial


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.sampled_from([8, 12, 16, 20, 28, 32]),
    width=st.integers(8, 36),
    chans=st.integers(1, 3),
    dy=st.integers(-40, 40),
    dx=st.integers(-40, 40),
    pool=st.sampled_from(["avg", "max", "avgmax"]),
    centroid=st.booleans(),
    max_filter=st.booleans(),
    order=st.sampled_from(["conv_down_norm", "conv_norm_down"]),
    channels_last=st.booleans(),
)
def test_exact_circular_shift_invariance(
    seed: int, size: int, width: int, chans: int, dy: int, dx: int, pool: str,
    centroid: bool, max_filter: bool, order: str, channels_last: bool,
) -> None:
    """circular padding + APS (phases by norm or by the centroid, with or without the max
    filter) + global pooling, in either memory layout: logits equal for every circular shift."""
    torch.manual_seed(seed)
    kw = {"phase": "centroid", "order": order} if centroid else {}
    model = create_model("invariant", num_classes=7, in_chans=chans, widths=(8, 16, 16), pool=pool,
                         max_filter=max_filter, **kw)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, chans, size, width, generator=gen)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = model(x)
        b = model(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(9, 33),
    width=st.integers(9, 33),
    dy=st.floats(-20, 20),
    dx=st.floats(-20, 20),
    name=st.sampled_from(["invariant", "invariant_d4"]),
    g=st.integers(0, 7),
    blur=st.sampled_from([0.0, 2.0]),
    phase=st.sampled_from(["norm", "centroid"]),
)
def test_canonical_models_are_invariant_to_sub_pixel_shifts(
    seed: int, height: int, width: int, dy: float, dx: float, name: str, g: int, blur: float,
    phase: str,
) -> None:
    """ShiftCanonical first (centroid of the intensity or of the local energy): logits equal
    for any band-limited circular shift, sub-pixel too, combined for the D4 model with any
    rotation by 90° or flip; APS phases by norm or from that centroid."""
    from biocnn.augment import fourier_shift
    from biocnn.models.d4 import d4_transform

    torch.manual_seed(seed)
    model = create_model(name, num_classes=5, widths=(4, 6, 8), canonical=True,
                         canonical_blur=blur, phase=phase).eval()
    model.head[-1].weight.data.mul_(10)
    x = torch.randn(2, 1, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = model(x)
        moved = fourier_shift(x, torch.tensor([[dy, dx], [dx, dy]]))
        b = model(d4_transform(moved, g) if name == "invariant_d4" else moved)
    assert (a[0] - a[1]).abs().max() > 1e-3  # not a constant function
    # the energy's fourth power amplifies the float32 rounding of the Fourier shift itself
    torch.testing.assert_close(b, a, atol=1e-3 if blur else 1e-4, rtol=0)


def test_invariance_holds_in_training_mode_too() -> None:
    torch.manual_seed(0)
    model = create_model("invariant", widths=(8, 16, 16)).train()
    x = torch.randn(4, 1, 28, 28)
    a, b = model(x), model(torch.roll(x, (5, -11), (2, 3)))
    assert torch.allclose(a, b, atol=1e-4)


def test_zero_padding_model_is_not_exactly_invariant() -> None:
    """The control: the same core with zero padding and max-pool changes its logits."""
    torch.manual_seed(0)
    model = create_model("gap_zero_pad", widths=(8, 16, 16)).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        diff = (model(x) - model(torch.roll(x, (5, -11), (2, 3)))).abs().max()
    assert diff > 1e-3


def test_class_activation_map_pools_to_logits() -> None:
    torch.manual_seed(0)
    model = create_model("invariant", widths=(8, 16), pool="avg").eval()
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        cam = model.class_activation_map(x)
        logits = model(x)
    assert cam.shape[:2] == (3, 10)
    assert torch.allclose(cam.mean((2, 3)) + model.head[-1].bias, logits, atol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [{}, {"depths": 2, "pool": "avg"}, {"norm": "none"}, {"blur": 3}, {"max_filter": True},
     {"order": "conv_norm_down"}, {"phase": "centroid"}, {"phase": "centroid", "norm": "none"}],
)
def test_fast_layer_is_the_same_architecture_as_the_reference(kw: dict) -> None:
    """``fast`` only picks the implementation: same state_dict keys and same outputs and
    gradients as the reference composition of the same ``order``."""
    torch.manual_seed(0)
    fast = create_model("invariant", num_classes=4, widths=(6, 8, 8), **kw)
    slow = create_model("invariant", num_classes=4, widths=(6, 8, 8), fast=False, **kw)
    assert list(fast.state_dict()) == list(slow.state_dict())
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 1, 20, 20)
    a, b = fast(x), slow(x)  # train mode: batch statistics
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), slow.eval()(x))


def test_centroid_phases_sample_alike_images_alike_and_name_their_needs() -> None:
    """phase='centroid': two different images with the same centroid keep the same grid
    at every level; the grid follows a shift; bad combinations are one-line errors."""
    from biocnn.models.layers import centroid_phases, circular_centroid

    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    x = torch.cat([x, 3 * x + 1])  # other values, same first harmonic phase
    phases = centroid_phases(x, 2)
    assert phases.shape == (2, 2) and torch.equal(phases[:, 0], phases[:, 1])
    # a circular shift by (dy, dx) adds (dy, dx) to the whole centroid: bit l follows
    moved = centroid_phases(torch.roll(x, (1, 2), (2, 3)), 2)
    whole = torch.floor(circular_centroid(x) + 0.5).long() % 16
    bits = ((whole + torch.tensor([1, 2])) % 16)[None] >> torch.arange(2)[:, None, None] & 1
    assert torch.equal(moved, 2 * bits[..., 0] + bits[..., 1])
    # after ShiftCanonical every centroid sits on the frame centre: one grid for all images
    canon = create_model("invariant", widths=(4, 8, 8), canonical=True).canonical
    phases = centroid_phases(canon(torch.randn(64, 1, 24, 24)), 2)  # (levels, B)
    assert (phases == phases[:, :1]).all()
    # the model keeps exactly those phases (and so differs from the norm choice)
    model = create_model("invariant", widths=(8, 16, 16), phase="centroid").eval()
    normed = create_model("invariant", widths=(8, 16, 16)).eval()
    normed.load_state_dict(model.state_dict())
    x = torch.randn(16, 1, 16, 16)
    with torch.no_grad():
        levels = centroid_phases(x, 2)
        y = model.features[1](model.features[0](x, levels[0]), levels[1])
        manual = model.head(model.pool(model.features[2](y)))
        torch.testing.assert_close(model(x), manual)
        assert not torch.allclose(model(x), normed(x), atol=1e-4)
    # an ambiguous centroid (mirror symmetry about a half pixel, no first harmonic) falls back
    # to the norm choice, so those images stay exactly invariant too
    half = torch.rand(3, 1, 16, 8)
    tricky = torch.cat([torch.cat([half, half.flip(-1)], -1), torch.rand(1, 1, 1, 4).repeat(3, 1, 16, 4)])
    assert (centroid_phases(tricky, 2) == -1).all()
    for kw in ({}, {"max_filter": True}, {"order": "conv_norm_down"}, {"fast": False}):
        net = create_model("invariant", widths=(8, 16, 16), phase="centroid", **kw).eval()
        with torch.no_grad():
            ref = net(tricky)
            for shift in ((1, 0), (0, 1), (3, 5), (-7, 2)):
                torch.testing.assert_close(net(torch.roll(tricky, shift, (2, 3))), ref, atol=1e-4, rtol=0)
    for bad, match in (({"phase": "random"}, "phase must be"),
                       ({"phase": "centroid", "downsample": "maxpool"}, "downsample='aps'"),
                       ({"phase": "centroid", "max_filter": True, "blur": 3}, "not both")):
        with pytest.raises(BiocnnError, match=match):
            create_model("invariant", **bad)


def test_block_order_is_explicit_and_blur_keeps_the_topology() -> None:
    keys = list(create_model("invariant", widths=(8, 16)).state_dict())
    assert list(create_model("invariant", widths=(8, 16), blur=3).state_dict()) == keys
    assert list(create_model("invariant", widths=(8, 16), max_filter=True).state_dict()) == keys
    # conv → norm → act → APS: a separate downsampling layer between the stages
    other = create_model("invariant", widths=(8, 16), order="conv_norm_down")
    assert isinstance(other.features[1], APS2d) and list(other.state_dict()) != keys
    with pytest.raises(BiocnnError, match="order"):
        create_model("invariant", order="down_first")


@pytest.mark.parametrize("order", ["conv_down_norm", "conv_norm_down"])
@pytest.mark.parametrize("blur", [1, 3])
def test_both_orders_are_exactly_shift_invariant(order: str, blur: int) -> None:
    torch.manual_seed(1)
    model = create_model("invariant", widths=(8, 16, 16), order=order, blur=blur).eval()
    x = torch.randn(2, 1, 24, 28)
    with torch.no_grad():
        a, b = model(x), model(torch.roll(x, (7, -3), (2, 3)))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["invariant", "invariant_d4"])
def test_canonical_models_keep_cams_in_the_input_frame_and_invariance_under_amp(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, widths=(4, 6, 8), canonical=True).eval()
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:10, 5:9] = 3
    x += 0.1 * torch.randn_like(x)
    moved = torch.roll(x, (16, 8), (2, 3))
    with torch.no_grad():
        cam, cam_moved = model.class_activation_map(x), model.class_activation_map(moved)
        step = 32 // cam.shape[-1]
        torch.testing.assert_close(torch.roll(cam, (16 // step, 8 // step), (2, 3)), cam_moved,
                                   atol=1e-5, rtol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the phase is taken in float32
            a, b = model.canonical(x), model.canonical(torch.roll(x, (5, 3), (2, 3)))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["invariant", "invariant_d4"])
def test_energy_centred_models_sample_every_image_on_one_grid(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``canonical_blur`` the APS phases come from the energy map the canonical step
    centred: the bits of the frame centre for every image, not the phases of the centred
    image's intensity centroid."""
    from biocnn.models import layers

    seen: list[torch.Tensor] = []
    original = layers.centroid_phases

    def record(x: torch.Tensor, levels: int) -> torch.Tensor:
        seen.append(original(x, levels))
        return seen[-1]

    monkeypatch.setattr(layers, "centroid_phases", record)
    torch.manual_seed(0)
    model = create_model(name, widths=(4, 8, 8), canonical=True, canonical_blur=2.0,
                         phase="centroid").eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        model(x)
        intensity = original(model.canonical(x), 2)
    assert torch.equal(seen[0], torch.tensor([[0] * 16, [3] * 16]))  # 14 = 0b1110
    assert (intensity != seen[0]).any()
