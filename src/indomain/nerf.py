"""A small differentiable 3-D scene for score distillation, in pure PyTorch (no CUDA extensions).

- `VoxelField`: density and colour on a ``G^3`` voxel grid over the box ``[-bound, bound]^3``, read with trilinear
  interpolation (``F.grid_sample``). A fixed *density blob*, positive inside ``blob_radius`` and negative outside, is added
  to the learned density, so the scene starts as a ball in empty space (Magic3D's blob, threestudio's ``density_bias``); without it SDS
  has nothing to shape at the first steps. Colour is ``sigmoid`` of the colour grid (albedo only: no lighting).
- `Cameras` / `sample_cameras` / `orbit_cameras`: cameras on a sphere around the origin, looking at it, z up.
  Azimuth 0° puts the camera on +x (the *front* of the object faces +x), 90° on +y; elevation is above the xy plane.
  These are threestudio's random-camera conventions (its ``random-camera-datamodule``).
- `render`: volume rendering (Max 1995; NeRF, Mildenhall et al. 2020, Eq. 3) of ``num_samples`` points per ray
  between the ray's entry into and exit from the box; stratified jitter with a generator, evenly spaced without.
  Pixels are composited over a constant background (white: the emoji world's).

At 32 x 32 px, a 32^3 grid and 48 samples per ray one view costs ~50k grid reads; a 2-core CPU renders and
back-propagates it in a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VoxelField(nn.Module):
    """Density and albedo on a ``resolution^3`` grid over ``[-bound, bound]^3``, plus a fixed density blob.

    ``sigma(p) = softplus(density(p) + blob_density * (1 - |p| / blob_radius))``, ``rgb(p) = sigmoid(color(p))``.
    The parameters are ``density`` (1, 1, G, G, G) and ``color`` (1, 3, G, G, G), indexed [z, y, x] as grid_sample reads.
    """

    def __init__(self, resolution: int = 32, bound: float = 1.0, blob_density: float = 10.0, blob_radius: float = 0.5,
                 color_init_std: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"resolution must be at least 2, got {resolution}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.resolution, self.bound = resolution, bound
        self.blob_density, self.blob_radius = blob_density, blob_radius
        g = torch.Generator().manual_seed(seed)
        self.density = nn.Parameter(torch.zeros(1, 1, resolution, resolution, resolution))
        self.color = nn.Parameter(color_init_std * torch.randn(1, 3, resolution, resolution, resolution, generator=g))

    def blob(self, points: Tensor) -> Tensor:
        """The fixed density bias at ``points`` (..., 3)."""
        return self.blob_density * (1 - points.norm(dim=-1) / self.blob_radius)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma (...), rgb (..., 3))`` at world ``points`` (..., 3); zero density outside the box."""
        shape = points.shape[:-1]
        grid = (points / self.bound).reshape(1, 1, 1, -1, 3)  # grid_sample's (x, y, z) in [-1, 1]
        raw = F.grid_sample(torch.cat([self.density, self.color], 1), grid, mode="bilinear", padding_mode="border",
                            align_corners=True)  # (1, 4, 1, 1, P)
        raw = raw.reshape(4, -1).t().reshape(*shape, 4)
        inside = (points.abs() <= self.bound).all(-1)
        sigma = F.softplus(raw[..., 0] + self.blob(points)) * inside
        return sigma, torch.sigmoid(raw[..., 1:])

    def total_variation(self) -> Tensor:
        """Mean squared difference between neighbouring voxels of both grids (a smoothness prior)."""
        grids = torch.cat([self.density, self.color], 1)
        return sum((grids.diff(dim=d) ** 2).mean() for d in (2, 3, 4)) / 3

    def field_config(self) -> dict:
        """The constructor arguments that fix the parameters' shapes and meaning (saved with the weights)."""
        return {"resolution": self.resolution, "bound": self.bound, "blob_density": self.blob_density,
                "blob_radius": self.blob_radius}


# ----------------------------------------------------------------------------------------------------
# Cameras


@dataclass
class Cameras:
    """A batch of look-at-origin cameras. Angles in degrees; ``distance`` in scene units; ``fovy`` vertical."""

    azimuth: Tensor  # (B,)
    elevation: Tensor  # (B,)
    distance: Tensor  # (B,)
    fovy: Tensor  # (B,)

    def __len__(self) -> int:
        return self.azimuth.shape[0]

    def positions(self) -> Tensor:
        """Camera centres (B, 3): ``d (cos el cos az, cos el sin az, sin el)``."""
        az, el = torch.deg2rad(self.azimuth), torch.deg2rad(self.elevation)
        return self.distance[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions, each (B, H, W, 3), through pixel centres; row 0 is the top of the image."""
        eye = self.positions()  # (B, 3)
        forward = F.normalize(-eye, dim=-1)
        up_world = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(forward)
        right = F.normalize(torch.cross(forward, up_world, dim=-1), dim=-1)
        up = torch.cross(right, forward, dim=-1)
        tan_y = torch.tan(torch.deg2rad(self.fovy) / 2)[:, None, None, None]  # (B, 1, 1, 1)
        tan_x = tan_y * width / height
        ys = 1 - (torch.arange(height, dtype=eye.dtype, device=eye.device) + 0.5) / height * 2  # (H,) top = +1
        xs = (torch.arange(width, dtype=eye.dtype, device=eye.device) + 0.5) / width * 2 - 1  # (W,)
        x = xs[None, None, :, None] * tan_x  # (B, 1, W, 1)
        y = ys[None, :, None, None] * tan_y  # (B, H, 1, 1)
        dirs = forward[:, None, None] + x * right[:, None, None] + y * up[:, None, None]  # (B, H, W, 3)
        return eye[:, None, None].expand_as(dirs), F.normalize(dirs, dim=-1)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def sample_cameras(n: int, generator: torch.Generator | None = None, elevation: tuple[float, float] = (-10.0, 45.0),
                   azimuth: tuple[float, float] = (-180.0, 180.0), distance: tuple[float, float] = (2.5, 3.0),
                   fovy: tuple[float, float] = (35.0, 45.0)) -> Cameras:
    """``n`` random cameras, each angle, distance and field of view uniform in its range (CPU tensors)."""
    return Cameras(azimuth=_uniform(n, *azimuth, generator), elevation=_uniform(n, *elevation, generator),
                   distance=_uniform(n, *distance, generator), fovy=_uniform(n, *fovy, generator))


def orbit_cameras(n: int, elevation: float = 15.0, distance: float = 2.75, fovy: float = 40.0,
                  start: float = 0.0) -> Cameras:
    """``n`` cameras at evenly spaced azimuths ``start + 360 i / n`` (a turntable), the first one at ``start``."""
    az = start + 360.0 * torch.arange(n, dtype=torch.float32) / n
    az = (az + 180.0) % 360.0 - 180.0  # in [-180, 180)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return Cameras(azimuth=az, elevation=full(elevation), distance=full(distance), fovy=full(fovy))


# ----------------------------------------------------------------------------------------------------
# Volume rendering


@dataclass
class RenderOutput:
    """``rgb`` (B, 3, H, W) in [0, 1], composited over the background; ``opacity`` and ``depth`` (B, 1, H, W)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor


def _box_hits(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays into ``[-bound, bound]^3`` (slab method); exit <= entry for a miss."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-bound - origins) * inv, (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def render(field: VoxelField, cameras: Cameras, height: int, width: int, num_samples: int = 48,
           background: float = 1.0, generator: torch.Generator | None = None) -> RenderOutput:
    """Volume-render ``field`` from ``cameras``: ``C = Σ_i T_i α_i c_i + (1 − Σ_i T_i α_i) · background``.

    ``α_i = 1 − exp(−σ_i δ_i)``, ``T_i = Π_{j<i} (1 − α_j)``; samples are evenly spaced between the ray's box entry
    and exit, each jittered inside its interval when a ``generator`` is given (stratified sampling, for training).
    """
    device = field.density.device
    cams = Cameras(*(v.to(device=device, dtype=torch.float32) for v in
                     (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fovy)))
    origins, dirs = cams.rays(height, width)  # (B, H, W, 3)
    near, far = _box_hits(origins, dirs, field.bound)  # (B, H, W)
    hit = far > near
    far = torch.where(hit, far, near)
    u = (torch.arange(num_samples, dtype=torch.float32, device=device) + 0.5) / num_samples  # (S,)
    if generator is not None:
        jitter = torch.rand(*near.shape, num_samples, generator=generator).to(device) - 0.5
        u = (u + jitter / num_samples).clamp(0, 1)
    depth = near[..., None] + (far - near)[..., None] * u  # (B, H, W, S)
    points = origins[..., None, :] + dirs[..., None, :] * depth[..., None]  # (B, H, W, S, 3)
    sigma, rgb = field(points)  # (B, H, W, S), (B, H, W, S, 3)
    delta = ((far - near) / num_samples)[..., None].expand_as(sigma)
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans  # (B, H, W, S)
    opacity = weights.sum(-1)  # (B, H, W)
    color = (weights[..., None] * rgb).sum(-2) + (1 - opacity[..., None]) * background  # (B, H, W, 3)
    mean_depth = (weights * depth).sum(-1) / opacity.clamp_min(1e-6)
    return RenderOutput(rgb=color.permute(0, 3, 1, 2), opacity=opacity[:, None], depth=mean_depth[:, None])


def tensor_to_pil(images: Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> a list of RGB PIL images."""
    import PIL.Image

    arr = (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [PIL.Image.fromarray(a) for a in arr]

