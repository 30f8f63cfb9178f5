"""Small layers: BlurPool, APS, the fused APS conv, circular padding, global pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.models.layers import (
    APS2d,
    APSConv2d,
    BlurPool2d,
    CircularConv2d,
    ConvBlock,
    DownConv2d,
    GlobalPool2d,
    MaxPoolStride1,
    _crop_windows,
    _uncrop_windows,
    circular_pad,
    make_downsample,
)


def test_blurpool_shapes_and_dc_gain() -> None:
    x = torch.ones(2, 3, 10, 11)
    y = BlurPool2d(3, filt_size=3, stride=2, padding="circular")(x)
    assert y.shape == (2, 3, 5, 6)
    assert torch.allclose(y, torch.ones_like(y))  # binomial filter sums to one


def test_blurpool_circular_is_equivariant_to_even_shifts() -> None:
    x = torch.randn(1, 2, 16, 16)
    pool = BlurPool2d(2, 3, 2, "circular")
    assert torch.allclose(pool(torch.roll(x, (2, 4), (2, 3))), torch.roll(pool(x), (1, 2), (2, 3)), atol=1e-6)


def test_aps_picks_the_largest_polyphase_component() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 3] = 5.0  # lives in component (1, 1)
    y = APS2d()(x)
    assert y.shape == (1, 1, 2, 2)
    assert y.abs().sum() == 5.0


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (3, 5)])
def test_aps_is_equivariant_up_to_a_shift(shift: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 12, 12)
    a, b = APS2d()(x), APS2d()(torch.roll(x, shift, (2, 3)))
    # same multiset of values per sample: the output is a circular shift of the other
    assert torch.allclose(a.flatten(1).sort(1).values, b.flatten(1).sort(1).values)


@pytest.mark.parametrize("max_filter", [False, True])
def test_aps_keeps_a_given_phase(max_filter: bool) -> None:
    """A phase per sample overrides the norm: component (i, j) of the (max-filtered) map,
    with and without gradients."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 3, 8, 6).contiguous(memory_format=fmt).requires_grad_(True)
        phase = torch.tensor([0, 1, 2, 3])
        y = APS2d(max_filter=max_filter)(x, phase)
        src = MaxPoolStride1()(x) if max_filter else x
        ref = torch.stack([src[b, :, q // 2 :: 2, q % 2 :: 2] for b, q in enumerate(phase.tolist())])
        torch.testing.assert_close(y, ref)
        g = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        with torch.no_grad():
            torch.testing.assert_close(APS2d(max_filter=max_filter)(x, phase), y)
        # -1 (an ambiguous centroid): that sample keeps its component of largest norm
        mixed = torch.tensor([-1, 1, -1, 3])
        by_norm = APS2d(max_filter=max_filter)(x)
        expect = torch.where((mixed < 0).view(-1, 1, 1, 1), by_norm, ref)
        torch.testing.assert_close(APS2d(max_filter=max_filter)(x, mixed), expect)
        with torch.no_grad():
            torch.testing.assert_close(APS2d(max_filter=max_filter)(x, mixed), expect)


def test_aps_passes_odd_sizes_through() -> None:
    x = torch.randn(1, 2, 7, 7)
    assert torch.equal(APS2d()(x), x)


def test_global_pool_modes() -> None:
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert torch.equal(GlobalPool2d("avg")(x), torch.tensor([[1.5, 5.5]]))
    assert torch.equal(GlobalPool2d("max")(x), torch.tensor([[3.0, 7.0]]))
    assert GlobalPool2d("avgmax")(x).shape == (1, 4)
    with pytest.raises(ValueError):
        GlobalPool2d("median")


def test_max_filter_circular_wraps() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    y = MaxPoolStride1("circular")(x)
    assert y.shape == x.shape
    assert y[0, 0, 3, 3] == 1.0 and y[0, 0, 0, 0] == 1.0


@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("shape", [(3, 5, 8, 10), (2, 4, 7, 8), (4, 3, 6, 6)])
def test_max_filter_aps_equals_the_dense_filter_then_aps(padding: str, shape: tuple) -> None:
    """The fused layer (components from strided windows) is the reference composition,
    values and gradients, in both memory formats; odd sizes only max-filter."""
    from biocnn.models.layers import APS2d

    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(*shape).contiguous(memory_format=fmt).requires_grad_(True)
        fused = APS2d(0, 1, padding, max_filter=True)(x)
        ref = APS2d(0, 1, padding)(MaxPoolStride1(padding)(x))
        assert torch.equal(fused, ref)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(fused, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        with torch.no_grad():
            assert torch.equal(APS2d(0, 1, padding, max_filter=True)(x), ref)
    with pytest.raises(ValueError, match="max_filter"):
        APS2d(4, 3, padding, max_filter=True)


@pytest.mark.parametrize("down", ["max_filter", "maxpool", "aps"])
def test_inference_in_batch_slices_equals_the_whole_batch(monkeypatch, down: str) -> None:
    """DownConv2d without gradients and the max-filter APS run the batch in slices (made
    tiny here): the same outputs and gradients as the whole batch."""
    import biocnn.models.layers as layers

    torch.manual_seed(0)
    make = {"max_filter": lambda: APS2d(0, 1, "circular", max_filter=True),
            "maxpool": lambda: make_downsample("maxpool", 6, "zeros"),
            "aps": lambda: APS2d()}[down]
    conv = DownConv2d(3, 6, 3, "circular", make())
    x = torch.randn(7, 3, 8, 10, requires_grad=True)
    g = torch.randn(7, 6, 4, 5)
    whole = conv(x)
    grad = torch.autograd.grad(whole, x, g)[0]
    monkeypatch.setattr(layers, "_SLICE_BYTES", 6 * 8 * 10 * 4 * 2)  # two samples a slice
    with torch.no_grad():
        torch.testing.assert_close(conv(x), whole)
    sliced = conv(x)
    torch.testing.assert_close(sliced, whole)
    torch.testing.assert_close(torch.autograd.grad(sliced, x, g)[0], grad)
    if down != "maxpool":  # a given phase per sample follows its slice
        phase = torch.arange(7) % 4
        with torch.no_grad():
            torch.testing.assert_close(conv(x, phase), conv.down(conv._conv(x), phase))


def test_make_downsample_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="downsample"):
        make_downsample("strided", 4)


@settings(max_examples=25, deadline=None)
@given(
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
)
def test_circular_pad_matches_torch_forward_and_backward(
    pad: tuple[int, int, int, int], h: int, w: int
) -> None:
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, h, w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
        ref = F.pad(x, pad, mode="circular")
        out = circular_pad(x, pad)
        assert torch.equal(out, ref)
        assert out.is_contiguous(memory_format=fmt)  # channels-last stays channels-last
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@pytest.mark.parametrize(
    ("cin", "cout", "k", "bias"),  # Gram-form norms (C k^2 < C_out, no bias) or a full conv
    [(1, 32, 3, False), (2, 8, 3, False), (8, 16, 3, False), (4, 8, 3, True), (1, 32, 5, False),
     (3, 4, 1, False)],
)
def test_aps_conv_equals_conv_then_aps_with_gradients(cin: int, cout: int, k: int, bias: bool
                                                      ) -> None:
    torch.manual_seed(cin + cout)
    fused = APSConv2d(cin, cout, k, bias=bias).double()
    plain = torch.nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="circular",
                            bias=bias).double()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(7, cin, 12, 10, dtype=torch.float64, requires_grad=True)
    out, ref = fused(x), APS2d()(plain(x))
    assert out.shape == (7, cout, 6, 5)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, fused.weight], g),
                    torch.autograd.grad(ref, [x, plain.weight], g), strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # inference path: one full conv
        torch.testing.assert_close(fused(x), ref)


def test_aps_conv_on_odd_sizes_is_a_plain_circular_conv() -> None:
    fused = APSConv2d(2, 4, 3)
    plain = CircularConv2d(2, 4, 3)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 2, 7, 8)
    torch.testing.assert_close(fused(x), plain(x))


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_conv_block_fast_layer_is_the_same_composition(padding: str) -> None:
    """conv → APS → norm → act: the fused APSConv2d (circular only) and the reference
    DownConv2d have the same state_dict keys and outputs, in train mode with gradients."""
    torch.manual_seed(0)
    fast = ConvBlock(3, 8, 3, padding, down=APS2d(), fast=True)
    slow = ConvBlock(3, 8, 3, padding, down=APS2d(), fast=False)
    assert isinstance(fast[0], APSConv2d if padding == "circular" else DownConv2d)
    assert isinstance(slow[0], DownConv2d)
    assert list(fast.state_dict()) == list(slow.state_dict())
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 10, 12)
    out_fast, out_slow = fast(x), slow(x)
    assert out_fast.shape == (4, 8, 5, 6)
    torch.testing.assert_close(out_fast, out_slow)
    out_fast.square().sum().backward()
    out_slow.square().sum().backward()
    torch.testing.assert_close(fast[0].weight.grad, slow[0].weight.grad)


def test_conv_block_with_blurred_aps_keeps_the_keys_of_plain_aps() -> None:
    blurred = ConvBlock(2, 4, down=APS2d(4, filt_size=3))
    assert isinstance(blurred[0], DownConv2d)
    assert list(blurred.state_dict()) == list(ConvBlock(2, 4, down=APS2d()).state_dict())
    assert blurred(torch.randn(1, 2, 8, 8)).shape == (1, 4, 4, 4)


@pytest.mark.parametrize("mode", ["avg", "max", "avgmax"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_global_pool_gradient_matches_autograd(mode: str, fmt: torch.memory_format) -> None:
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    parts = {"avg": [x.mean((2, 3))], "max": [x.amax((2, 3))],
             "avgmax": [x.mean((2, 3)), x.amax((2, 3))]}[mode]
    ref = torch.cat(parts, dim=1)
    out = GlobalPool2d(mode)(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grad = torch.autograd.grad(out, x, g)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(ref, x, g)[0])
    assert mode == "avg" or grad.is_contiguous(memory_format=fmt)  # avg: a broadcast view


@pytest.mark.parametrize("window", [(9, 7), (10, 8)])  # a 3x3 conv's windows, a max filter's
def test_phase_windows_grouped_and_gather_paths_agree(window: tuple[int, int]) -> None:
    """The CPU (a copy per phase group) and GPU (one gather / scatter) paths of APSConv2d's
    and the max filter's window crop give the same windows and the same adjoint."""
    h, w = window
    torch.use_deterministic_algorithms(True)  # torch.empty fills NaN: a missed element shows
    try:
        for fmt in (torch.contiguous_format, torch.channels_last):
            xp = torch.randn(6, 3, 11, 9).contiguous(memory_format=fmt)
            phase = torch.tensor([0, 3, 1, 2, 3, 0])
            windows = _crop_windows(xp, phase, h, w, grouped=True)
            assert windows.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(_crop_windows(xp, phase, h, w, grouped=False), windows)
            assert torch.equal(windows[1], xp[1, :, 1 : h + 1, 1 : w + 1])
            g = torch.randn_like(windows)
            back = _uncrop_windows(g, phase, xp.shape, grouped=True)
            assert back.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(_uncrop_windows(g, phase, xp.shape, grouped=False), back)
            torch.testing.assert_close((back * xp).sum(), (g * windows).sum())  # adjoint
    finally:
        torch.use_deterministic_algorithms(False)
    with pytest.raises(ValueError, match="0..3"):  # an unresolved -1 would leave rows unset
        _crop_windows(xp, torch.tensor([0, -1, 1, 2, 3, 0]), h, w, grouped=True)


@pytest.mark.parametrize(("cin", "bias"), [(1, False), (4, True)])
def test_aps_conv_under_bf16_autocast_returns_float32_gradients(cin: int, bias: bool) -> None:
    conv = APSConv2d(cin, 16, 3, bias=bias)
    x = torch.randn(3, cin, 12, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    out.float().square().sum().backward()
    assert out.shape == (3, 16, 6, 6)
    assert x.grad.dtype == conv.weight.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("size", [(7, 8), (8, 9), (16, 16), (33, 34)])
def test_fourier_shift_is_a_phase_ramp_without_nyquist(size: tuple[int, int]) -> None:
    """Equal to a phase ramp on the 2D DFT (Nyquist terms removed); whole shifts of
    odd sizes are rolls; shifts compose."""
    import math

    from biocnn.augment import fourier_shift

    h, w = size
    x = torch.randn(3, 2, h, w, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([[0.3, -1.7], [2.5, 0.0], [-0.5, 0.5]])
    ky, kx = torch.fft.fftfreq(h)[:, None], torch.fft.fftfreq(w)[None, :]
    keep = (ky.abs() < 0.5) & (kx.abs() < 0.5)
    phase = -2 * math.pi * (ky * s[:, 0, None, None] + kx * s[:, 1, None, None])
    ref = torch.fft.ifft2(torch.fft.fft2(x) * keep * torch.polar(torch.ones_like(phase), phase)[:, None]).real
    torch.testing.assert_close(fourier_shift(x, s), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fourier_shift(fourier_shift(x, s), -s), fourier_shift(x, 0 * s),
                               atol=1e-5, rtol=0)
    if h % 2 and w % 2:
        whole = torch.tensor([[2.0, -3.0]] * 3)
        torch.testing.assert_close(fourier_shift(x, whole), torch.roll(x, (2, -3), (2, 3)),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("blur", [0.0, 2.0])
def test_shift_canonical_maps_every_shift_to_one_image_and_commutes_with_flips(blur: float) -> None:
    from biocnn.augment import fourier_shift
    from biocnn.models.layers import ShiftCanonical

    canon = ShiftCanonical(blur)
    x = torch.randn(2, 1, 20, 21, generator=torch.Generator().manual_seed(1))
    ref = canon(x)
    for s in ([0.4, -7.25], [13.0, 2.5]):
        moved = fourier_shift(x, torch.tensor([s, s[::-1]]))
        torch.testing.assert_close(canon(moved), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(canon(torch.roll(x, (5, -3), (2, 3))), ref, atol=1e-4, rtol=0)
    # a flip moves the canonical image by at most one whole pixel (absorbed by the core)
    flipped = canon(torch.flip(x, (3,)))
    err = min((flipped - torch.roll(torch.flip(ref, (3,)), k, 3)).abs().max() for k in (-1, 0, 1))
    assert err < 1e-4
    # a point mass lands at the frame centre
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 1, 7] = 1
    assert canon(delta)[0, 0].argmax().item() == 4 * 9 + 4


def test_energy_centroid_stays_on_a_noisy_particle_when_content_leaves_the_frame() -> None:
    """A zero-mean blob (a particle after CTF) in noise, shifted by whole pixels with zero
    fill: the energy centroid follows the shift to a fraction of a pixel; the intensity's
    first harmonic, mostly noise, does not."""
    from biocnn.augment import shift_images
    from biocnn.models.layers import ShiftCanonical, circular_centroid

    gen = torch.Generator().manual_seed(0)
    n, size = 64, 48
    r2 = ((torch.arange(size) - size / 2) ** 2)[:, None] + ((torch.arange(size) - size / 2) ** 2)
    blob = 3 * (torch.exp(-r2 / 40) - 0.5 * torch.exp(-r2 / 80))  # a positive core, negative ring
    x = blob + torch.randn(n, 1, size, size, generator=gen)
    shift = torch.randint(-5, 6, (n, 2), generator=gen).float()
    moved = shift_images(x, shift, "zeros")

    def error(located) -> torch.Tensor:
        d = circular_centroid(located(moved)) - circular_centroid(located(x)) - shift
        return ((d + size / 2) % size - size / 2).abs().amax(1)

    energy, intensity = error(ShiftCanonical(2.0).located), error(lambda t: t)
    assert energy.max() < 0.5 and energy.median() < 0.05 and intensity.median() > 1
    for bad in (-1.0, 0.5, float("nan")):  # under 1.5 px the squares alias
        with pytest.raises(ValueError, match="canonical_blur"):
            ShiftCanonical(bad)
