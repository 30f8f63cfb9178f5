"""Image formation of 2D class averages (RELION/cryoSPARC 2D classification output).

A class average is the mean of ``K`` aligned particle images of one view. Each member
``X_i = c_i S + N_i`` has its own CTF ``c_i`` (defocus drawn per member) and white noise
``N_i`` of variance ``sigma^2`` with ``var(c_i s) / sigma^2 = snr`` in the original box;
the average is CTF-corrected one of two ways:

* **phase flip** (cryoSPARC, RELION ``--ctf`` with phase flipping): ``mean(sign(c_i) X_i)``
  = ``S mean|c_i| + noise`` of variance ``sigma^2 / K``;
* **Wiener** (RELION's class average): ``sum c_i X_i / (sum c_i^2 + sigma^2 / tau^2)`` with
  ``tau^2 = fudge * |S|^2`` (radial power, RELION ``--tau2_fudge``): signal
  ``S A / (A + r)``, noise variance ``sigma^2 A / (A + r)^2`` with ``A = sum c_i^2``.

Both are computed in closed form on the Fourier grid, never simulating the ``K`` images
(:func:`explicit_phase_flip_average` does, for the tests). Residual misalignment is a
Gaussian shift envelope (the expectation over members) plus an average of a few
projections at jittered orientations (in-plane rotation error and view spread). The
data were recorded at ``apix_orig`` Å/px in a ``box_orig`` box (0.8-5 Å, 64-400 px) and
are rendered directly at the output box: frequencies beyond the original Nyquist are
zero and the noise keeps the original per-pixel level, as Fourier cropping/padding does.
The result is background-subtracted (outer mask annulus), scaled to unit standard
deviation inside the mask, multiplied by a soft circular mask (raised cosine, RELION's
``--particle_diameter`` with a 5 px edge) and shows protein white on dark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.sim.config import AverageSettings
from biocnn.sim.ctf import electron_wavelength
from biocnn.sim.project import images_to_spectra, spectra_to_images

__all__ = [
    "CORRECTIONS",
    "AverageParams",
    "draw_average_params",
    "ctf_moments",
    "soft_mask",
    "average_transfer",
    "class_average",
    "finish_average",
    "small_rotations",
    "explicit_phase_flip_average",
]

CORRECTIONS = ("phase_flip", "wiener")
_PROFILE_SAMPLES = 512


@dataclass(frozen=True)
class AverageParams:
    """Acquisition and classification parameters of one class average.

    Attributes
    ----------
    apix
        Output pixel size in Å (``apix_orig * box_orig / box``).
    apix_orig, box_orig
        Pixel size (Å) and box (px) the particles were extracted at.
    n_particles
        ``K``, the members averaged.
    snr
        Per-member ``var(CTF * projection) / var(noise)`` in the original box.
    defocus_lo, defocus_hi
        Member defoci are uniform in this range (Å, positive = underfocus).
    bfactor
        Envelope B-factor of each member (Å^2).
    voltage, cs, amplitude_contrast
        kV, mm, fraction.
    correction
        One of :data:`CORRECTIONS`.
    shift_error
        Std (output px) of the members' residual translational misalignment.
    mask_diameter, mask_edge
        Soft mask diameter and raised-cosine edge width in output pixels.
    tau2_fudge
        Wiener regularisation fudge (RELION default for 2D: 2).
    """

    apix: float
    apix_orig: float
    box_orig: int
    n_particles: int
    snr: float
    defocus_lo: float
    defocus_hi: float
    bfactor: float
    voltage: float
    cs: float
    amplitude_contrast: float
    correction: str
    shift_error: float
    mask_diameter: float
    mask_edge: float
    tau2_fudge: float = 2.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_average_params(
    rng: np.random.Generator, s: AverageSettings, box: int, diameter: float
) -> tuple[AverageParams, float]:
    """Draw the parameters of one class average of a particle ``diameter`` Å across.

    The particle spans ``fill`` of the mask and the mask ``mask`` of the box; the output
    pixel size follows, and the original pixel size and box are drawn inside their
    ranges so that ``apix_orig * box_orig = apix * box`` (clamped where impossible).

    Returns
    -------
    params, particle_px
        The parameters and the particle diameter in output pixels.
    """
    mask_px = rng.uniform(s.mask_min, s.mask_max) * box
    # the output pixel size must let apix_orig in [apix_min, apix_max] and box_orig in range
    apix_lo = s.apix_min * s.box_min / box
    apix_hi = s.apix_max * s.box_max / box
    f_lo = max(s.fill_min, diameter / (apix_hi * mask_px))
    f_hi = min(s.fill_max, diameter / (apix_lo * mask_px))
    fill = rng.uniform(f_lo, f_hi) if f_lo < f_hi else float(np.clip(s.fill_min, f_hi, f_lo))
    apix = float(np.clip(diameter / (fill * mask_px), apix_lo, apix_hi))
    extent = apix * box  # Å across the box
    a_lo = max(s.apix_min, extent / s.box_max)
    a_hi = min(s.apix_max, extent / s.box_min)
    apix_orig = _log_uniform(rng, a_lo, a_hi) if a_lo < a_hi else a_lo
    # a whole number of original pixels whose size stays inside [a_lo, a_hi]
    b_lo, b_hi = math.ceil(extent / a_hi - 1e-9), math.floor(extent / a_lo + 1e-9)
    box_orig = round(extent / apix_orig)
    box_orig = max(2, min(max(box_orig, b_lo), b_hi) if b_lo <= b_hi else box_orig)
    apix_orig = extent / box_orig
    d0 = rng.uniform(s.defocus_min, s.defocus_max)
    spread = rng.uniform(0.2, 1.5)
    lo, hi = max(0.2, d0 - spread / 2), d0 + spread / 2
    k = round(_log_uniform(rng, s.particles_min, s.particles_max))
    params = AverageParams(
        apix=apix, apix_orig=apix_orig, box_orig=int(box_orig), n_particles=int(k),
        snr=_log_uniform(rng, s.particle_snr_min, s.particle_snr_max),
        defocus_lo=1e4 * lo, defocus_hi=1e4 * hi,
        bfactor=rng.uniform(s.bfactor_min, s.bfactor_max),
        voltage=300.0 if rng.random() < 0.8 else 200.0, cs=2.7,
        amplitude_contrast=rng.uniform(0.07, 0.1),
        correction=CORRECTIONS[int(rng.random() < s.wiener_share)],
        shift_error=rng.uniform(0.0, s.shift_error_max) * diameter / apix,
        mask_diameter=mask_px, mask_edge=max(1.0, s.mask_edge * apix_orig / apix),
        tau2_fudge=s.tau2_fudge,
    )
    return params, diameter / apix


def small_rotations(n: int, sigma_deg: float, rng: np.random.Generator) -> torch.Tensor:
    """``(n, 3, 3)`` rotations about random axes by angles ~ N(0, sigma) degrees (Rodrigues)."""
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    theta = np.radians(rng.normal(0.0, sigma_deg, n))[:, None, None]
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(0, 2, 1)
    r = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    return torch.from_numpy(r.astype(np.float32))


def _radii(size: int, apix: float) -> torch.Tensor:
    """``(size, size // 2 + 1)`` spatial frequency magnitude (1/Å) of an rfft2 grid."""
    fy = torch.fft.fftfreq(size, d=apix)[:, None]
    fx = torch.fft.rfftfreq(size, d=apix)[None, :]
    return torch.sqrt(fx**2 + fy**2)


def ctf_moments(
    defocus: torch.Tensor, k: torch.Tensor, voltage: float, cs: float, amplitude_contrast: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``|CTF|`` and mean ``CTF^2`` over members at frequencies ``k``.

    Members are taken as non-astigmatic: over many members the astigmatism averages out
    and the moments become radial.

    Parameters
    ----------
    defocus
        ``(K,)`` defoci in Å.
    k
        ``(R,)`` frequencies in 1/Å.

    Returns
    -------
    tuple of torch.Tensor
        Two ``(R,)`` float64 profiles.
    """
    lam = electron_wavelength(voltage)
    k2 = k.double()[None, :] ** 2
    gamma = (math.pi * lam * defocus.double()[:, None] * k2
             - 0.5 * math.pi * cs * 1e7 * lam**3 * k2**2 + math.asin(amplitude_contrast))
    c = torch.sin(gamma)
    return c.abs().mean(0), (c**2).mean(0)


def _profile_to_grid(profile: torch.Tensor, kmax: float, k: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of a profile sampled uniformly on ``[0, kmax]`` at ``k``."""
    pos = (k / kmax * (profile.shape[0] - 1)).clamp(0, profile.shape[0] - 1)
    lo = pos.floor().long().clamp(max=profile.shape[0] - 2)
    t = pos - lo
    return (profile[lo] * (1 - t) + profile[lo + 1] * t).float()


def soft_mask(size: int, diameter: float, edge: float) -> torch.Tensor:
    """Circular mask: 1 within ``diameter / 2``, raised cosine to 0 over ``edge`` px. ``(size, size)``."""
    c = torch.arange(size, dtype=torch.float32) - size // 2
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    t = ((r - diameter / 2) / max(edge, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def average_transfer(
    spectrum: torch.Tensor, p: AverageParams, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal transfer and noise variance of the CTF-corrected average of ``K`` members.

    Parameters
    ----------
    spectrum
        ``(m, m // 2 + 1)`` clean projection spectrum at ``p.apix`` (members' box: the
        central ``size`` crop).
    size
        Output box edge (px).
    rng
        Draws the members' defoci.

    Returns
    -------
    transfer, noise_var
        ``(m, m // 2 + 1)`` real factor on the clean spectrum, and ``(size, size // 2 + 1)``
        variance (per pixel of white unit noise) of the average's noise at each frequency.
    """
    m = spectrum.shape[-2]
    kmax = float(_radii(m, p.apix).max()) * 1.001
    kr = torch.linspace(0, kmax, _PROFILE_SAMPLES, dtype=torch.float64)
    # the CTF moments of K members, estimated from at most 256 of them (exact up to ~3 %)
    defoci = torch.from_numpy(rng.uniform(p.defocus_lo, p.defocus_hi, min(p.n_particles, 256)))
    mabs, msq = ctf_moments(defoci, kr, p.voltage, p.cs, p.amplitude_contrast)

    def transfer(size_: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = _radii(size_, p.apix)
        env = torch.exp(-p.bfactor * k**2 / 4) * (k <= 0.5 / p.apix_orig)
        # expected residual-shift envelope of a Gaussian misalignment of std shift_error px
        env = env * torch.exp(-2 * (math.pi * p.shift_error * p.apix * k) ** 2)
        return env, _profile_to_grid(mabs, kmax, k), _profile_to_grid(msq, kmax, k)

    env, a_m, q_m = transfer(m)
    member = spectra_to_images(spectrum * env * q_m.sqrt(), m, size)
    var = float(member.var())
    # per-pixel noise variance in the original box, carried to output sampling (n / N)^2
    sigma2 = (var / p.snr if var > 0 else 1.0) * (size / p.box_orig) ** 2
    env_n, a_n, q_n = transfer(size) if m != size else (env, a_m, q_m)
    if p.correction == "phase_flip":
        # mean of K phase-flipped members = S * mean|CTF| + white noise of variance sigma^2 / K
        return a_m * env, torch.full_like(env_n, sigma2 / p.n_particles) * (env_n > 0)
    # RELION's regulariser sigma_c^2 / tau^2 in the members' (size) box, capped at 50 so
    # that classes without signal still pass their noise as RELION's do
    power = _radial_profile(images_to_spectra(member[None])[0])
    reg = (sigma2 * size * size / (p.tau2_fudge * power).clamp_min(1e-30)).clamp(max=50.0)
    bins = float(reg.shape[0] - 1)
    reg_m = _profile_to_grid(reg, 1.0, _radii(m, p.apix) * size * p.apix / bins)
    reg_n = _profile_to_grid(reg, 1.0, _radii(size, p.apix) * size * p.apix / bins)
    big_a = p.n_particles * q_m * env**2
    a_n2 = p.n_particles * q_n * env_n**2
    return big_a / (big_a + reg_m), sigma2 * a_n2 / (a_n2 + reg_n) ** 2


def class_average(
    spectrum: torch.Tensor,
    p: AverageParams,
    size: int,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> torch.Tensor:
    """A CTF-corrected class average of a clean projection, before masking.

    Parameters
    ----------
    spectrum
        ``(m, m // 2 + 1)`` clean (already orientation-averaged) projection spectrum at
        ``p.apix``, ``m >= size``, origin at the centre pixel; the members' box is the
        central ``size`` crop.
    size
        Output box edge (px).
    generator, rng
        Noise generator and parameter generator.

    Returns
    -------
    torch.Tensor
        ``(size, size)`` float32 image (signal plus noise, unit-free).
    """
    t_sig, noise_var = average_transfer(spectrum, p, size, rng)
    signal = spectra_to_images(spectrum * t_sig, spectrum.shape[-2], size)
    white = images_to_spectra(torch.randn(1, size, size, generator=generator))[0]
    noise = spectra_to_images(white * noise_var.sqrt(), size)
    return (signal + noise).float()


def _radial_profile(spec: torch.Tensor) -> torch.Tensor:
    """Radial mean of ``|spec|^2`` by integer frequency bin of an ``(n, n // 2 + 1)`` grid. ``(R,)``."""
    n = spec.shape[-2]
    r = (_radii(n, 1.0) * n).round().long().flatten()
    total = torch.bincount(r, (spec.abs() ** 2).flatten().double())
    return total / torch.bincount(r).clamp_min(1)


def finish_average(image: torch.Tensor, p: AverageParams) -> torch.Tensor:
    """Subtract the background (outer mask annulus), scale to unit std in the mask, mask.

    Parameters
    ----------
    image
        ``(n, n)`` raw class average.

    Returns
    -------
    torch.Tensor
        ``(n, n)`` float32, zero outside the soft mask.
    """
    n = image.shape[-1]
    c = torch.arange(n, dtype=torch.float32) - n // 2
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    radius = p.mask_diameter / 2
    ring = (r > 0.85 * radius) & (r <= radius)
    out = image - image[ring].median()
    inside = r <= radius
    out = out / out[inside].std().clamp_min(1e-12)
    return (out * soft_mask(n, p.mask_diameter, p.mask_edge)).float()


def explicit_phase_flip_average(
    spectrum: torch.Tensor, p: AverageParams, generator: torch.Generator,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force reference: simulate ``K`` members, phase-flip each, average.

    Members have the defoci, envelope and noise level the closed form assumes (no
    misalignment). Returns the average's signal part and noise part separately,
    ``(n, n)`` each, for comparison with :func:`class_average`.
    """
    n = spectrum.shape[-2]
    k = _radii(n, p.apix)
    lam = electron_wavelength(p.voltage)
    env = torch.exp(-p.bfactor * k**2 / 4) * (k <= 0.5 / p.apix_orig)
    defoci = torch.from_numpy(rng.uniform(p.defocus_lo, p.defocus_hi, p.n_particles))
    gamma = (math.pi * lam * defoci[:, None, None] * k.double() ** 2
             - 0.5 * math.pi * p.cs * 1e7 * lam**3 * k.double() ** 4
             + math.asin(p.amplitude_contrast))
    ctf = torch.sin(gamma).float() * env
    member = spectra_to_images(spectrum * ctf, n)
    sigma = math.sqrt(float(member.var(dim=(-2, -1)).mean()) / p.snr * (n / p.box_orig) ** 2)
    white = images_to_spectra(sigma * torch.randn(p.n_particles, n, n, generator=generator))
    band = (env > 0).float()
    flip = torch.sign(ctf)
    signal = spectra_to_images(spectrum * ctf * flip, n).mean(0)
    noise = spectra_to_images(white * band * flip, n).mean(0)
    return signal, noise
