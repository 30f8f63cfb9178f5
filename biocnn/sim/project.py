"""Orientations (RELION ZYZ Euler angles) and Fourier-slice projection of volumes.

Convention (RELION, Heymann et al. 2005): the rotation matrix ``A`` of angles
``(rot, tilt, psi)`` maps volume coordinates into the image frame, and the image is the
projection along z of the rotated volume, ``image(x, y) = sum_z V(A^T (x, y, z))``. The
projection direction in the volume frame is the third row of ``A``,
``(sin tilt cos rot, sin tilt sin rot, cos tilt)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "euler_to_matrix",
    "random_orientations",
    "FourierProjector",
    "spectra_to_images",
    "images_to_spectra",
]


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """RELION rotation matrices from ZYZ Euler angles.

    Parameters
    ----------
    angles
        ``(B, 3)`` ``(rot, tilt, psi)`` in degrees.

    Returns
    -------
    torch.Tensor
        ``(B, 3, 3)`` matrices ``A = R_z(psi) R_y(tilt) R_z(rot)``.
    """
    rot, tilt, psi = torch.deg2rad(angles).unbind(-1)
    ca, sa = torch.cos(rot), torch.sin(rot)
    cb, sb = torch.cos(tilt), torch.sin(tilt)
    cg, sg = torch.cos(psi), torch.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = (
        cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb,
        -sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb,
        sc, ss, cb,
    )
    return torch.stack(rows, dim=-1).reshape(*angles.shape[:-1], 3, 3)


def random_orientations(
    n: int, generator: torch.Generator | None = None, tilt_max: float = 180.0
) -> torch.Tensor:
    """Draw orientations uniformly on SO(3) (optionally restricted to ``tilt <= tilt_max``).

    ``rot`` and ``psi`` are uniform on ``[-180, 180)`` and ``cos(tilt)`` is uniform on
    ``[cos(tilt_max), 1]``, which is the Haar measure when ``tilt_max = 180``.

    Returns
    -------
    torch.Tensor
        ``(n, 3)`` float32 ``(rot, tilt, psi)`` in degrees.
    """
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    cos_min = math.cos(math.radians(tilt_max))
    rot = 360.0 * u[:, 0] - 180.0
    tilt = torch.rad2deg(torch.arccos(1.0 - (1.0 - cos_min) * u[:, 1]))
    psi = 360.0 * u[:, 2] - 180.0
    return torch.stack([rot, tilt, psi], dim=1).float()


class FourierProjector:
    """Project a volume along arbitrary orientations by the Fourier-slice theorem.

    The volume is divided by the trilinear-interpolation apodisation (``sinc^2`` per axis),
    zero-padded ``pad``-fold, and Fourier transformed once; each projection is a central
    slice sampled by trilinear interpolation (``grid_sample`` on real and imaginary parts).

    Parameters
    ----------
    volume
        ``(n, n, n)`` density indexed ``[z, y, x]`` and centred at ``n // 2``.
    pad
        Oversampling factor of the 3D spectrum.
    """

    def __init__(self, volume: torch.Tensor, pad: int = 2) -> None:
        n = volume.shape[-1]
        if volume.shape != (n, n, n):
            raise ValueError(f"volume must be a cube, got shape {tuple(volume.shape)}")
        p = pad * n
        self.size, self.padded_size = n, p
        volume = volume.float()
        dev = volume.device
        w = torch.sinc((torch.arange(n, device=dev) - n // 2) / p) ** 2
        # (-1)^x on the input and (-1)^(k + p/2) on the output stand in for ifftshift/fftshift
        o = p // 2 - n // 2
        c = 1.0 - 2.0 * ((torch.arange(n, device=dev) + o) % 2)
        c = c / w
        padded = volume.new_zeros(p, p, p)
        padded[o : o + n, o : o + n, o : o + n] = volume * (c[:, None, None] * c[:, None] * c)
        spec = torch.fft.fftn(padded)
        del padded
        sign = 1.0 - 2.0 * ((torch.arange(p, device=dev) + p // 2) % 2)
        spec *= sign[:, None, None] * sign[:, None] * sign
        # (1, 2, p, p, p) view with the real/imaginary channel innermost (channels-last 3D),
        # which keeps each trilinear corner fetch in one cache line
        self._spec = torch.view_as_real(spec).permute(3, 0, 1, 2)[None]
        ky = torch.fft.fftfreq(n, 1.0 / n, device=volume.device)
        kx = torch.arange(n // 2 + 1, device=volume.device, dtype=torch.float32)
        plane = torch.stack(torch.broadcast_tensors(kx[None, :], ky[:, None], torch.zeros(())), -1)
        self._plane = (plane * pad).reshape(1, -1, 3)  # (1, n * (n // 2 + 1), 3), (kx, ky, 0)

    def slices(self, rotations: torch.Tensor) -> torch.Tensor:
        """Central slices: the 2D spectra of the projections.

        Parameters
        ----------
        rotations
            ``(B, 3, 3)`` matrices from :func:`euler_to_matrix`.

        Returns
        -------
        torch.Tensor
            ``(B, n, n // 2 + 1)`` complex64 in ``torch.fft.rfft2`` layout, for images whose
            origin is the centre pixel ``n // 2`` (see :func:`spectra_to_images`).
        """
        b, n, p = rotations.shape[0], self.size, self.padded_size
        coords = self._plane @ rotations.to(self._plane)  # (B, m, 3): A^T k for each k
        grid = (coords + p // 2) * (2.0 / (p - 1)) - 1.0
        out = F.grid_sample(
            self._spec, grid.reshape(1, b, n, n // 2 + 1, 3),
            mode="bilinear", padding_mode="zeros", align_corners=True,
        )[0]  # (2, B, n, n // 2 + 1)
        return torch.complex(out[0], out[1])

    def project(self, rotations: torch.Tensor) -> torch.Tensor:
        """Real-space projections.

        Parameters
        ----------
        rotations
            ``(B, 3, 3)`` rotation matrices.

        Returns
        -------
        torch.Tensor
            ``(B, n, n)`` float32 images centred at ``n // 2``.
        """
        return spectra_to_images(self.slices(rotations), self.size)


def spectra_to_images(
    spectra: torch.Tensor, size: int, out_size: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`images_to_spectra`, optionally cropped to the central ``out_size``.

    Parameters
    ----------
    spectra
        ``(B, size, size // 2 + 1)`` complex, rfft2 layout, image origin at ``size // 2``.
    size
        Edge of the full image.
    out_size
        Edge of the central crop (default ``size``).

    Returns
    -------
    torch.Tensor
        ``(B, out_size, out_size)`` real images centred at ``out_size // 2``.
    """
    images = torch.fft.fftshift(torch.fft.irfft2(spectra, s=(size, size)), dim=(-2, -1))
    out = size if out_size is None else out_size
    o = size // 2 - out // 2
    return images[..., o : o + out, o : o + out]


def images_to_spectra(images: torch.Tensor) -> torch.Tensor:
    """rfft2 spectra of images whose origin is the centre pixel.

    Parameters
    ----------
    images
        ``(B, n, n)`` real.

    Returns
    -------
    torch.Tensor
        ``(B, n, n // 2 + 1)`` complex.
    """
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))
