"""PyTorch3D backend: ``MeshRasterizer`` on screen-space vertices + a Lambert shader, batched, CUDA when
asked.

The rasterizer's ``transform`` is replaced by the shared projection of ``renderers.base``: vertices arrive as
pixel coordinates and view depth and are mapped to PyTorch3D's NDC (+x left, +y up, the shorter image side
spanning [-1, 1]); rasterization is perspective-correct with the view depth. The shader interpolates
normals and positions with the barycentric coordinates and applies the same shading formula as the OpenGL
backend (``renderers.base``: the style's albedo, ambient and gamma). On CPU PyTorch3D rasterizes naively
(about 2.5 s per 512x512 image here): use it on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from renderers.base import RasterJob, RasterOut, RenderConfig, Renderer, RendererError

logger = logging.getLogger(__name__)


def _rasterizer_class():
    from pytorch3d.renderer import MeshRasterizer

    class ScreenSpaceRasterizer(MeshRasterizer):
        """``MeshRasterizer`` whose input meshes are already in NDC with view depth as z."""

        def transform(self, meshes_world, **kwargs):
            return meshes_world

    return ScreenSpaceRasterizer


def screen_to_ndc(screen: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(…, 3) pixel (u, v) + view z -> PyTorch3D NDC (x left, y up, shorter side in [-1, 1]) + z."""
    H, W = size
    s = float(min(H, W))
    x = (1.0 - (2.0 * screen[..., 0] + 1.0) / W) * (W / s)
    y = (1.0 - (2.0 * screen[..., 1] + 1.0) / H) * (H / s)
    return torch.stack([x, y, screen[..., 2]], dim=-1)


class PyTorch3DRenderer(Renderer):
    """Batched PyTorch3D renderer (see module doc)."""

    name = "pytorch3d"

    @classmethod
    def from_config(cls, config: RenderConfig | None = None, device: str = "cpu") -> PyTorch3DRenderer:
        """``renderers.RENDERERS``' factory."""
        return cls(config, device=device)

    def __init__(self, config: RenderConfig | None = None, device: str = "cpu") -> None:
        super().__init__(config)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise RendererError("the pytorch3d renderer was asked for CUDA but no CUDA device is available")
        self.device = torch.device(device)
        try:
            self._cls = _rasterizer_class()
        except ImportError as exc:
            raise RendererError(
                f"pytorch3d does not import ({exc}); install easypytorch3d==0.7.9.post1"
            ) from exc

    @torch.no_grad()
    def rasterize(self, jobs: Sequence[RasterJob]) -> list[RasterOut]:
        from pytorch3d.ops import interpolate_face_attributes
        from pytorch3d.renderer import RasterizationSettings
        from pytorch3d.structures import Meshes

        outs: list[RasterOut | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}  # one raster pass per image size and shading
        for i, job in enumerate(jobs):
            alb = np.asarray(job.albedo, dtype=np.float32).tobytes()
            groups.setdefault((job.size, float(job.ambient), float(job.gamma), alb), []).append(i)
        dev = self.device
        for (size, ambient, gamma, _), idx in groups.items():
            settings = RasterizationSettings(
                image_size=size,
                blur_radius=0.0,
                faces_per_pixel=1,
                perspective_correct=True,
                z_clip_value=1e-6,
                cull_backfaces=False,
            )
            rasterizer = self._cls(raster_settings=settings)
            verts = [screen_to_ndc(torch.as_tensor(jobs[i].screen, device=dev), size) for i in idx]
            faces = [torch.as_tensor(jobs[i].faces, dtype=torch.int64, device=dev) for i in idx]
            meshes = Meshes(verts=verts, faces=faces)
            frags = rasterizer(meshes)
            pix = frags.pix_to_face  # (N, H, W, 1), ids into packed faces
            packed_faces = meshes.faces_packed()
            view = torch.cat([torch.as_tensor(jobs[i].view, device=dev) for i in idx])
            normals = torch.cat([torch.as_tensor(jobs[i].normals, device=dev) for i in idx])
            hand_v = torch.cat([torch.as_tensor(jobs[i].hand.astype(np.int64), device=dev) for i in idx])
            attrs = torch.cat([view[packed_faces], normals[packed_faces]], dim=-1)  # (F, 3, 6)
            interp = interpolate_face_attributes(pix, frags.bary_coords, attrs)[..., 0, :]  # (N, H, W, 6)
            pos, nrm = interp[..., :3], interp[..., 3:]
            n = torch.nn.functional.normalize(nrm, dim=-1)
            lvec = torch.nn.functional.normalize(-pos, dim=-1)
            c = (n * lvec).sum(-1).abs()
            hit = pix[..., 0] >= 0
            face_hand = hand_v[packed_faces[:, 0]]
            hand = torch.where(hit, face_hand[pix[..., 0].clamp(min=0)], torch.zeros_like(pix[..., 0]))
            albedo = torch.as_tensor(jobs[idx[0]].albedo, device=dev)[hand]  # (N, H, W, 3)
            if gamma != 1.0:  # as the OpenGL shader: exact Lambert for gamma 1
                c = c.clamp_min(1e-12).pow(gamma)
            rgb = albedo * (ambient + (1.0 - ambient) * c)[..., None]
            rgb = torch.where(hit[..., None], rgb, torch.zeros_like(rgb))
            rgb8 = (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
            depth = (
                torch.where(hit, frags.zbuf[..., 0], torch.zeros_like(frags.zbuf[..., 0]))
                .float()
                .cpu()
                .numpy()
            )
            mask = hand.to(torch.uint8).cpu().numpy()
            for k, i in enumerate(idx):
                outs[i] = RasterOut(rgb=rgb8[k], mask=mask[k], depth=depth[k])
        return outs  # type: ignore[return-value]
