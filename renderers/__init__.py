"""Mesh renderers: shared geometry (``renderers.base``) and backends that only rasterize. ``RENDERERS`` maps a
backend name to its class; ``renderers.base.make_renderer`` picks one (``auto``: PyTorch3D on CUDA, OpenGL
otherwise)."""

from pipeline.registry import Registry

RENDERERS = Registry(
    "renderer",
    {
        "opengl": "renderers.opengl_backend:OpenGLRenderer.from_config",
        "pytorch3d": "renderers.pytorch3d_backend:PyTorch3DRenderer.from_config",
    },
)
"""Renderer backends by name; a factory takes the ``RenderConfig`` and ``device``."""
