"""p4m (shifts + D4) invariant models: group algebra, layer equivariance, exact invariance."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn import BiocnnError, create_model
from biocnn.models.d4 import (
    _INV,
    _MUL,
    D4_ORDER,
    D4GroupConv2d,
    D4InvariantCNN,
    D4LiftConv2d,
    d4_transform,
)

ELEMENTS = range(D4_ORDER)


def _act_on_group_maps(y: torch.Tensor, g: int) -> torch.Tensor:
    """The group's action on D4 feature maps ``(B, C * 8, H, W)``: transform every plane
    by ``g`` and move group copy ``g^-1 h`` to ``h``."""
    b, c8, h, w = y.shape
    y = y.view(b, c8 // D4_ORDER, D4_ORDER, h, w)[:, :, [_MUL[_INV[g]][k] for k in ELEMENTS]]
    y = d4_transform(y, g)
    return y.reshape(b, c8, *y.shape[-2:])


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is a real test,
    and a head scaled up so that logits of different images differ well above 1e-4."""
    gen = torch.Generator().manual_seed(seed)
    model.head[-1].weight.data.mul_(10)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
            mod.running_var.copy_(0.05 + 0.2 * torch.rand(n, generator=gen))
            mod.weight.data.copy_(1 + 0.5 * torch.randn(n, generator=gen))
            mod.bias.data.copy_(0.2 * torch.randn(n, generator=gen))


def test_cayley_table_is_the_composition_of_the_transforms() -> None:
    x = torch.randn(2, 5, 5)
    for a, b in itertools.product(ELEMENTS, ELEMENTS):
        assert torch.equal(d4_transform(d4_transform(x, b), a), d4_transform(x, _MUL[a][b]))
    assert all(_MUL[a][_INV[a]] == 0 for a in ELEMENTS)
    assert sorted(_MUL[3]) == list(ELEMENTS)  # a row is a permutation
    assert len({tuple(d4_transform(x, e).flatten().tolist()) for e in ELEMENTS}) == D4_ORDER


@pytest.mark.parametrize("size", [(10, 10), (9, 9), (8, 12)])
@pytest.mark.parametrize("aps", [False, True])
def test_lifting_and_group_convs_are_equivariant(size: tuple[int, int], aps: bool) -> None:
    torch.manual_seed(0)
    lift, group = D4LiftConv2d(2, 3, aps=aps), D4GroupConv2d(3, 4, aps=aps)
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        y = lift(x)
        z = group(y)
        for g in ELEMENTS:
            gy = lift(d4_transform(x, g))
            torch.testing.assert_close(gy, _act_on_group_maps(y, g), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(group(gy), _act_on_group_maps(z, g), atol=1e-5, rtol=1e-5)
    assert y.shape[1] == 3 * D4_ORDER and z.shape[1] == 4 * D4_ORDER


def test_group_conv_shares_weights_across_the_group() -> None:
    conv = D4GroupConv2d(3, 5)
    assert conv.weight.shape == (5, 3, D4_ORDER, 3, 3)
    assert conv.expanded_weight().shape == (5 * D4_ORDER, 3 * D4_ORDER, 3, 3)
    # every expanded entry is a copy of a shared one, and every shared one is used 8 times
    assert torch.equal(conv.index.bincount(), torch.full((D4_ORDER * 9,), D4_ORDER))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(9, 33),
    width=st.integers(9, 33),
    dy=st.integers(-40, 40),
    dx=st.integers(-40, 40),
    pool=st.sampled_from(["avg", "max", "avgmax"]),
    group_pool=st.sampled_from(["max", "avg"]),
    norm=st.sampled_from(["batch", "batch", "group", "none"]),
    phase=st.sampled_from(["norm", "centroid"]),
    fast=st.booleans(),
    max_filter=st.booleans(),
)
def test_exact_invariance_to_shifts_rotations_and_flips(
    seed: int, height: int, width: int, dy: int, dx: int, pool: str, group_pool: str, norm: str,
    phase: str, fast: bool, max_filter: bool,
) -> None:
    """Logits equal for every D4 element combined with a circular shift, odd and even sizes,
    in eval mode (running statistics) and in train mode (batch statistics), APS phases by
    norm or from the centroid, fast or reference convs, with or without the max filter."""
    torch.manual_seed(seed)
    model = create_model("invariant_d4", num_classes=7, in_chans=2, widths=(4, 6, 8), pool=pool,
                         group_pool=group_pool, norm=norm, phase=phase, fast=fast,
                         max_filter=max_filter)
    _randomise_norms(model, seed)
    x = torch.randn(3, 2, height, width, generator=torch.Generator().manual_seed(seed))
    moved = [torch.roll(d4_transform(x, g), (dy, dx), (2, 3)) for g in ELEMENTS]
    with torch.no_grad():
        for mode in (False, True):
            model.train(mode)
            ref = model(x)
            assert (ref[0] - ref[1]).abs().max() > 1e-3  # not a constant function
            for g, xg in zip(ELEMENTS, moved, strict=True):
                # rtol: float32 rounding of logits in the hundreds, ~1e-6 relative seen (1e-13
                # in float64); a broken equivariance moves them by 1e-2 or more
                torch.testing.assert_close(model(xg), ref, atol=1e-4, rtol=1e-5, msg=f"g={g}")


def test_cryo_variant_is_exactly_invariant_on_a_power_of_two_box() -> None:
    torch.manual_seed(3)
    model = create_model("invariant_d4_m", num_classes=4, widths=(4, 4, 8, 8, 8), canonical=True,
                         canonical_blur=2.0, phase="centroid").eval()
    _randomise_norms(model, 3)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for g in ELEMENTS:
            torch.testing.assert_close(model(torch.roll(d4_transform(x, g), (13, -22), (2, 3))),
                                       ref, atol=1e-4, rtol=0)


def test_shift_only_core_is_not_rotation_invariant() -> None:
    """The control: the same test on the shift-invariant core fails for a rotation."""
    torch.manual_seed(0)
    model = create_model("invariant", widths=(8, 16, 16)).eval()
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        assert (model(x) - model(d4_transform(x, 1))).abs().max() > 1e-3


@pytest.mark.parametrize(("order", "norm"), [("conv_down_norm", "batch"), ("conv_norm_down", "batch"),
                                             ("conv_down_norm", "none")])
def test_fast_path_is_the_reference_composition(order: str, norm: str) -> None:
    torch.manual_seed(0)
    kw = {"num_classes": 3, "widths": (3, 5, 6), "depths": (1, 2, 1), "order": order, "norm": norm}
    fast, slow = create_model("invariant_d4", **kw), create_model("invariant_d4", fast=False, **kw)
    assert list(fast.state_dict()) == list(slow.state_dict())
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 1, 16, 16)
    a, b = fast(x), slow(x)
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_norm_statistics_are_shared_by_the_group_copies() -> None:
    model = D4InvariantCNN(widths=(4, 6))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [4, 6]


def test_class_activation_map_pools_to_logits() -> None:
    torch.manual_seed(0)
    model = create_model("invariant_d4", widths=(4, 6), pool="avg").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        cam, logits = model.class_activation_map(x), model(x)
    assert cam.shape == (2, 10, 8, 8)
    torch.testing.assert_close(cam.mean((2, 3)) + model.head[-1].bias, logits)


def test_cryo_variant_matches_the_parameter_count_of_invariant_m() -> None:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    ref = count(create_model("invariant_m", widths=[16, 32, 64, 128]))
    assert abs(count(create_model("invariant_d4_m")) - ref) < 0.05 * ref


def test_a_small_model_fits_a_tiny_set() -> None:
    """Gradients reach every layer: 8 random images with 4 labels are fitted quickly."""
    torch.manual_seed(0)
    model = create_model("invariant_d4", num_classes=4, widths=(6, 8, 8))
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_centroid_phases_reach_the_first_aps_layer_and_differ_from_the_norm_choice() -> None:
    """With ``phase="centroid"`` the first APS keeps exactly :func:`centroid_phases`'
    component, which is not what the largest norm would keep."""
    from biocnn.models import layers

    torch.manual_seed(0)
    model = create_model("invariant_d4", num_classes=3, widths=(4, 6, 8), phase="centroid").eval()
    x = torch.randn(16, 1, 24, 24)
    seen: list[torch.Tensor] = []
    first = model.features[0][0]
    hook = first.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.testing.assert_close(seen[0], layers.centroid_phases(x, 2)[0])
    with torch.no_grad():
        y = F.conv2d(layers.circular_pad(x, (1, 1, 1, 1)), first.expanded_weight())
    b, c, h, w = y.shape
    by_norm = layers._component_norms(y.view(b, c, h // 2, 2, w // 2, 2)).argmax(1)
    assert (by_norm != seen[0]).any()
    with pytest.raises(BiocnnError, match="phase"):
        create_model("invariant_d4", phase="max")


def test_max_filter_keeps_the_3x3_maximum_at_the_kept_phase() -> None:
    """The filter is really there: with it, an APS conv's output is the 3x3 circular maximum
    of the conv output at the kept component, not the conv output itself."""
    torch.manual_seed(0)
    conv = D4LiftConv2d(1, 2, aps=True, max_filter=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), conv.expanded_weight())
        dense = F.max_pool2d(F.pad(y, (1, 1, 1, 1), mode="circular"), 3, stride=1)
        out = conv(x, torch.tensor([3, 0]))  # components (1, 1) and (0, 0)
    torch.testing.assert_close(out[0], dense[0, :, 1::2, 1::2])
    torch.testing.assert_close(out[1], dense[1, :, 0::2, 0::2])
    assert not torch.allclose(out[1], y[1, :, 0::2, 0::2])


@pytest.mark.parametrize("phase", [[0, 1, 2, 3, 0, 2], [3] * 6])
def test_strided_max_filter_equals_the_dense_filter_and_its_gradients(phase: list[int]) -> None:
    """The fast path (a stride-2 max-pool at the kept phase) gives the reference's values and
    gradients, for mixed phases and for one phase shared by the batch."""
    torch.manual_seed(0)
    for cls, c_in, x_chans in ((D4LiftConv2d, 1, 1), (D4GroupConv2d, 2, 16)):
        fast = cls(c_in, 3, aps=True, max_filter=True)
        ref = cls(c_in, 3, aps=True, max_filter=True, fast=False)
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(6, x_chans, 10, 12, requires_grad=True)
        q = torch.tensor(phase)
        a, b = fast(x, q), ref(x, q)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for ga, gb in zip(torch.autograd.grad(a.square().sum(), (x, fast.weight)),
                          torch.autograd.grad(b.square().sum(), (x, ref.weight)), strict=True):
            torch.testing.assert_close(ga, gb)
