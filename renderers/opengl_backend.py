"""OpenGL backend: moderngl with a headless EGL context (Mesa llvmpipe on CPU, the NVIDIA driver on GPU).

Vertices arrive already projected (``renderers.base``); the vertex shader maps pixel coordinates to clip
space with w = view z, so the GPU's perspective divide reproduces the pixel positions and interpolation is
perspective-correct. Image row v is framebuffer row v (the y axis is flipped in the shader, so no copy is
needed after readback). Two render targets: RGBA8 (shading, hand id in alpha) and R32F (view z). Buffers
persist between draws; the index buffer is reused while the faces do not change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from renderers.base import N_IDS, RasterJob, RasterOut, RenderConfig, Renderer, RendererError

logger = logging.getLogger(__name__)

APT_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri"
_Z_NEAR, _Z_FAR = 1e-3, 100.0

_VERTEX = """
#version 330
in vec3 in_screen;
in vec3 in_view;
in vec3 in_normal;
in float in_hand;
uniform vec2 size;
uniform float depth_a;
uniform float depth_b;
out vec3 v_view;
out vec3 v_normal;
out float v_z;
flat out int v_hand;
void main() {
    float z = in_screen.z;
    float xn = (in_screen.x + 0.5) / size.x * 2.0 - 1.0;
    float yn = (in_screen.y + 0.5) / size.y * 2.0 - 1.0;  // row v -> framebuffer row v (top-down)
    gl_Position = vec4(xn * z, yn * z, depth_a * z + depth_b, z);
    v_view = in_view;
    v_normal = in_normal;
    v_z = z;
    v_hand = int(in_hand + 0.5);
}
"""

_FRAGMENT = """
#version 330
in vec3 v_view;
in vec3 v_normal;
in float v_z;
flat in int v_hand;
uniform vec3 albedo[N_IDS];
uniform float ambient;
uniform float diffuse;
uniform float gamma;
layout(location = 0) out vec4 color;
layout(location = 1) out float z_out;
void main() {
    vec3 n = normalize(v_normal);
    vec3 l = normalize(-v_view);
    float c = abs(dot(n, l));
    if (gamma != 1.0) {
        c = pow(max(c, 1e-12), gamma);  // exp2/log2 in most drivers: skipped for gamma 1 (exact Lambert)
    }
    color = vec4(albedo[v_hand] * (ambient + diffuse * c), float(v_hand) / 255.0);
    z_out = v_z;
}
""".replace("N_IDS", str(N_IDS))


class OpenGLRenderer(Renderer):
    """Headless OpenGL renderer (see module doc). One EGL context per instance, created on first use."""

    name = "opengl"

    @classmethod
    def from_config(cls, config: RenderConfig | None = None, device: str = "cpu") -> OpenGLRenderer:
        """``renderers.RENDERERS``' factory (the GL context is the machine's EGL device, whatever
        ``device``)."""
        return cls(config)

    def __init__(self, config: RenderConfig | None = None) -> None:
        super().__init__(config)
        self._ctx = None
        self._fbos: dict[tuple[int, int], object] = {}
        self._vbo = self._ibo = self._vao = None
        self._vbo_bytes = 0
        self._faces = None

    def _context(self):
        if self._ctx is None:
            try:
                import moderngl

                self._ctx = moderngl.create_standalone_context(backend="egl")
            except Exception as exc:  # moderngl raises plain Exception when EGL/GL libraries are missing
                raise RendererError(
                    "OpenGL (EGL) is unavailable "
                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                    f"install the system libraries: apt-get install {APT_PACKAGES}"
                ) from exc
            self._prog = self._ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
            a = (_Z_FAR + _Z_NEAR) / (_Z_FAR - _Z_NEAR)
            b = -2.0 * _Z_FAR * _Z_NEAR / (_Z_FAR - _Z_NEAR)
            self._prog["depth_a"].value = a
            self._prog["depth_b"].value = b
            logger.debug("EGL context: %s", self._ctx.info.get("GL_RENDERER"))
        return self._ctx

    def _fbo(self, size: tuple[int, int]):
        if size not in self._fbos:
            ctx = self._context()
            H, W = size
            color = ctx.renderbuffer((W, H), components=4)
            z = ctx.renderbuffer((W, H), components=1, dtype="f4")
            depth = ctx.depth_renderbuffer((W, H))
            self._fbos[size] = ctx.framebuffer(color_attachments=[color, z], depth_attachment=depth)
        return self._fbos[size]

    def rasterize(self, jobs: Sequence[RasterJob]) -> list[RasterOut]:
        ctx = self._context()
        with ctx:  # make this renderer's context current: another renderer may have switched it
            return self._rasterize(ctx, jobs)

    def _rasterize(self, ctx, jobs: Sequence[RasterJob]) -> list[RasterOut]:
        import moderngl

        outs = []
        for job in jobs:
            H, W = job.size
            fbo = self._fbo(job.size)
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            ctx.enable(moderngl.DEPTH_TEST)
            ctx.disable(moderngl.CULL_FACE)
            self._prog["size"].value = (float(W), float(H))
            albedo = np.zeros((N_IDS, 3), dtype="f4")  # one row per id; a job may give fewer (no props)
            albedo[: len(job.albedo)] = job.albedo
            self._prog["albedo"].write(albedo.tobytes())
            self._prog["ambient"].value = float(job.ambient)
            self._prog["diffuse"].value = 1.0 - float(job.ambient)
            self._prog["gamma"].value = float(job.gamma)
            data = np.concatenate(
                [job.screen, job.view, job.normals, job.hand[:, None].astype(np.float32)], axis=1
            ).astype("f4")
            vao = self._buffers(data, job.faces)
            vao.render(moderngl.TRIANGLES, vertices=job.faces.size)
            rgba = np.frombuffer(fbo.read(components=4, attachment=0), dtype=np.uint8).reshape(H, W, 4)
            depth = np.frombuffer(fbo.read(components=1, attachment=1, dtype="f4"), dtype=np.float32).reshape(
                H, W
            )
            outs.append(RasterOut(rgb=rgba[..., :3], mask=rgba[..., 3], depth=depth))
        return outs

    def _buffers(self, data: np.ndarray, faces: np.ndarray):
        """The vertex array for ``data`` (V, 10) f4 and ``faces`` (F, 3), reusing GPU buffers."""
        ctx = self._ctx
        rebuild = False
        if self._vbo is None or data.nbytes > self._vbo_bytes:
            if self._vbo is not None:
                self._vbo.release()
            self._vbo_bytes = max(data.nbytes, 1 << 16)
            self._vbo = ctx.buffer(reserve=self._vbo_bytes, dynamic=True)
            rebuild = True
        self._vbo.write(data.tobytes())
        if self._faces is None or self._faces.shape != faces.shape or not np.array_equal(self._faces, faces):
            if self._ibo is not None:
                self._ibo.release()
            self._faces = np.array(faces, dtype="i4", copy=True)
            self._ibo = ctx.buffer(self._faces.tobytes())
            rebuild = True
        if rebuild or self._vao is None:
            if self._vao is not None:
                self._vao.release()
            self._vao = ctx.vertex_array(
                self._prog,
                [(self._vbo, "3f 3f 3f 1f", "in_screen", "in_view", "in_normal", "in_hand")],
                index_buffer=self._ibo,
                index_element_size=4,
            )
        return self._vao

    def close(self) -> None:
        if self._ctx is None:
            return
        self._ctx.__enter__()
        for obj in (self._vao, self._vbo, self._ibo):
            if obj is not None:
                obj.release()
        self._vao = self._vbo = self._ibo = self._faces = None
        for fbo in self._fbos.values():
            fbo.release()
        self._fbos.clear()
        if self._ctx is not None:
            self._ctx.release()
            self._ctx = None
