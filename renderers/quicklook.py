"""Quick-look renders of hand meshes with PyTorch3D (model figures, debugging).

Not the pipeline's renderer (that is ``renderers.base`` and its backends): this frames whatever mesh it is
given with a look-at camera and shades it light grey, for pictures of the hand model itself.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def render_views(
    verts: np.ndarray,
    faces: np.ndarray,
    view_dirs: list[tuple[float, float, float]],
    image_size: int = 320,
    up: tuple[float, float, float] = (0.0, 1.0, 0.0),
    color: tuple[float, float, float] = (0.78, 0.78, 0.76),
) -> np.ndarray:
    """Render one mesh from several directions.

    Args:
        verts: (V, 3) float vertices, metres.
        faces: (F, 3) int vertex ids, counter-clockwise seen from outside.
        view_dirs: directions from the mesh centre toward each camera (any length).
        image_size: output side, pixels.
        up: world up vector for the cameras.
    Returns: (len(view_dirs), image_size, image_size, 3) uint8 RGB, black background.
    """
    from pytorch3d.renderer import (
        FoVPerspectiveCameras,
        HardPhongShader,
        MeshRasterizer,
        MeshRenderer,
        PointLights,
        RasterizationSettings,
        TexturesVertex,
        look_at_view_transform,
    )
    from pytorch3d.structures import Meshes

    v = torch.as_tensor(np.asarray(verts, dtype=np.float32))
    f = torch.as_tensor(np.asarray(faces, dtype=np.int64))
    centre = (v.max(0).values + v.min(0).values) / 2
    radius = float((v - centre).norm(dim=1).max())
    dist = radius / np.tan(np.deg2rad(15.0)) * 1.05
    n = len(view_dirs)
    dirs = torch.tensor(view_dirs, dtype=torch.float32)
    eyes = centre + dirs / dirs.norm(dim=1, keepdim=True) * dist
    R, T = look_at_view_transform(
        eye=eyes, at=centre[None].expand(n, 3), up=torch.tensor([up] * n, dtype=torch.float32)
    )
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=30.0, znear=0.01, zfar=10.0)
    raster = RasterizationSettings(image_size=image_size, blur_radius=0.0, faces_per_pixel=1)
    lights = PointLights(
        location=eyes,
        ambient_color=((0.35, 0.35, 0.35),),
        diffuse_color=((0.6, 0.6, 0.6),),
        specular_color=((0.1, 0.1, 0.1),),
    )
    tex = TexturesVertex(verts_features=torch.tensor(color, dtype=torch.float32).expand(n, len(v), 3))
    mesh = Meshes(verts=[v] * n, faces=[f] * n, textures=tex)
    from pytorch3d.renderer import BlendParams

    shader = HardPhongShader(
        cameras=cameras, lights=lights, blend_params=BlendParams(background_color=(0, 0, 0))
    )
    renderer = MeshRenderer(rasterizer=MeshRasterizer(cameras=cameras, raster_settings=raster), shader=shader)
    with torch.no_grad():
        img = renderer(mesh)[..., :3]
    return (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def gesture_sheet(
    hand_model,
    gestures: tuple[str, ...] = ("open", "fist", "point", "pinch"),
    side: str = "right",
    tile: int = 320,
):
    """Contact sheet of the hand model in named gestures: palm view (top row) and side view (bottom row).

    ``hand_model`` is a ``pipeline.hand_model.HandModel``. Returns a ``PIL.Image`` (RGB).
    """
    from PIL import Image, ImageDraw

    from pipeline.gestures import gesture_pose
    from renderers.base import RendererError

    if int(tile) < 1:
        raise RendererError(f"tile size must be a positive number of pixels, got {tile}")

    poses = np.stack([gesture_pose(g, hand_model.hands_mean[side], side) for g in gestures])
    n = len(gestures)
    out = hand_model(side, poses, np.zeros((n, 10)), np.zeros((n, 3)))
    sign = 1.0 if side == "right" else -1.0
    views = [(0.0, -1.0, 1e-4), (0.5 * sign, -0.35, 1.0 * sign)]
    sheet = Image.new("RGB", (tile * n, tile * len(views) + 28), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, g in enumerate(gestures):
        imgs = render_views(
            out.vertices[i].cpu().numpy(), hand_model.faces[side], views, tile, up=(-sign, 0.0, 0.0)
        )
        for r, im in enumerate(imgs):
            sheet.paste(Image.fromarray(im), (i * tile, 28 + r * tile))
        draw.text((i * tile + 8, 8), f"{g} ({hand_model.info.name}, {side})", fill=(230, 230, 230))
    return sheet
