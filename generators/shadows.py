"""Shadow maps for the composite generator's directional lights (pure numpy, deterministic).

A light is directional, so its shadow map is an orthographic depth grid seen along the direction toward it:
light space has axes ``e1``, ``e2`` across the light's beam and ``l`` toward the light (``light_basis``), and
a texel holds the largest ``l`` coordinate (the surface nearest the light) of the occluders' triangles that
cover its centre (``rasterize_nearest``: scanline order, each triangle's rows, then each row's span between
its edges, edges included, so a closed mesh leaves no holes and a long sliver costs only its area). The
occluders are the scene's meshes (both hands and the props: forearms and the held object), so a surface the
camera does not see still casts its shadow.

A receiver (a shaded pixel, back-projected to camera space from the depth) is moved along its normal by
``normal_offset`` texels times the sine of its angle to the light (normal-offset shadows: the step grows with
the slope), projected into the grid and compared with the 3 x 3 texels around it, weighted by a tent of
radius 1.5 texels (percentage-closer filtering: soft edges about 3 texels wide, measured across the light); a
texel occludes when it is nearer the light by more than ``bias`` + ``slope_bias`` tan(angle) texels. The
offset and the biases cover the depth a lit plane gains across the filter's reach (up to 2.1 texels), so a
lit surface never shadows itself (no acne; tests/test_composite.py checks planes up to 85 degrees and a
sphere). The grid covers the receivers only (plus the filter's margin): occluders outside it cannot shadow
them. Receivers that no texel of their 3 x 3 block is nearer the light than skip the filter (lit).

A light with a size (``light_size`` > 0: the tangent of its angular radius, as seen from the scene: a softbox
or a window is wide, the sun is not) gets penumbrae that widen with the distance from the receiver to its
occluder, as real shadows do (percentage-closer soft shadows). A blocker search over ``SEARCH_TAPS`` taps of
the disc an occluder ``BLOCKER_REACH`` away would spread its penumbra over gives the mean distance toward the
light of the occluders it finds (none: lit); then ``PENUMBRA_TAPS`` taps over a disc of radius that distance
times ``light_size`` (at least ``MIN_PENUMBRA``, at most ``MAX_PENUMBRA`` texels) give the occluded share. A
receiver whose every search tap is occluded, with a penumbra no wider than the search's disc, is in the umbra
(1, without the second pass). Each tap compares against the receiver's tangent plane carried to the tap's
texel (receiver-plane depth bias, slope capped at ``AREA_SLOPE``) plus the constant and slope biases above, so
a lit plane does not shadow itself across the wider disc either. The taps are fixed spirals (deterministic; no
per-pixel rotation).

Cost, 512 x 512 images of the default run (two hands, forearms, an object; 10k to 60k receivers, grids of
about 100 x 100 to 400 x 100 texels): about 3 ms for the map and the 3 x 3 filter on this project's 2-core
machine, and about 5 ms more for the area light's filter (docs/benchmarks.md, "Soft shadows"); see
``CompositeGenerator._key_shadow`` for the whole step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.ndimage import maximum_filter

MAX_GRID = 1024
"""Texels along either side of a shadow map at most (the texel grows for a larger scene)."""
MAX_SLOPE = 5.0
"""The slope-scaled bias stops growing at this tan(angle to the light) (about 79 degrees)."""
PENUMBRA_TAPS, SEARCH_TAPS = 32, 16
"""Taps of the area light's filter and of its blocker search (``occlusion`` with ``light_size`` > 0)."""
AREA_SLOPE = 60.0
"""The area light's filter carries a receiver's tangent plane across its disc up to this tan(angle to the
light) (about 89 degrees): far wider than the 3 x 3 filter, it needs the plane, not only the biases."""
MIN_PENUMBRA, MAX_PENUMBRA = 1.5, 14.0
"""Texels: the area light's penumbra radius is clipped to these (the lower one: the 3 x 3 filter's reach)."""
BLOCKER_REACH = 0.06
"""Metres toward the light: the blocker search covers the disc an occluder this far away would spread its
penumbra over (about a hand's length: the other hand, a held object, fingers over the palm)."""


def _spiral(n: int) -> np.ndarray:
    """(2, n) float32: ``n`` points spread evenly over the unit disc (a sunflower spiral, golden angle)."""
    k = np.arange(n, dtype=np.float64)
    r = np.sqrt((k + 0.5) / n)
    a = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(a), r * np.sin(a)]).astype(np.float32)


_TAPS, _SEARCH = _spiral(PENUMBRA_TAPS), _spiral(SEARCH_TAPS)


@dataclasses.dataclass(frozen=True)
class ShadowParams:
    """``texel_px``: the texel in image pixels at the hands' median depth (the composite's choice,
    ``CompositeGenerator._key_shadow``), clipped to ``texel_range`` metres; ``normal_offset``, ``bias`` and
    ``slope_bias`` (times tan(angle to the light), at most ``MAX_SLOPE``) in texels (module doc)."""

    texel_px: float = 2.0
    texel_range: tuple = (0.0012, 0.004)
    normal_offset: float = 2.0
    bias: float = 0.5
    slope_bias: float = 0.5


def light_basis(to_light) -> np.ndarray:
    """(3, 3) float64 rows ``e1``, ``e2``, ``l``: an orthonormal, right-handed light space whose third axis
    points toward the light (``to_light``, camera space)."""
    lv = np.asarray(to_light, dtype=np.float64)
    lv = lv / np.linalg.norm(lv)
    helper = np.array([1.0, 0.0, 0.0]) if abs(lv[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(helper, lv)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(lv, e1), lv])


def rasterize_nearest(xy: np.ndarray, t: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(gh, gw) float32 grid (``shape``) holding, per texel, the largest ``t`` of the triangles that cover
    its centre, edges included (-inf where none does). ``xy`` (F, 3, 2): the triangles' corners in texel
    coordinates (texel (i, j) centred at x = i, y = j); ``t`` (F, 3): their depth toward the light,
    interpolated linearly. Scanline order: each triangle's rows, then each row's span of texels, so the work
    is the texels covered (long slivers cost no more than their area). Arrays are kept one-dimensional
    (numpy is slow on short trailing axes)."""
    gh, gw = shape
    grid = np.full(gh * gw, -np.inf, dtype=np.float32)
    x0, x1, x2 = (np.asarray(xy[:, k, 0], dtype=np.float64) for k in range(3))
    y0, y1, y2 = (np.asarray(xy[:, k, 1], dtype=np.float64) for k in range(3))
    t0, t1, t2 = (np.asarray(t[:, k], dtype=np.float64) for k in range(3))
    d = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    top = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2) - 1e-6), 0)
    bottom = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2) + 1e-6), gh - 1)
    keep = (
        (bottom >= top)
        & (np.maximum(np.maximum(x0, x1), x2) >= 0)
        & (np.minimum(np.minimum(x0, x1), x2) <= gw - 1)
        & (np.abs(d) > 1e-9)
    )
    if not keep.any():
        return grid.reshape(gh, gw)
    x0, x1, x2, y0, y1, y2, t0, t1, t2, d, top, bottom = (
        a[keep] for a in (x0, x1, x2, y0, y1, y2, t0, t1, t2, d, top, bottom)
    )
    # barycentric coordinates l1, l2 and l0 = 1 - l1 - l2 as planes a x + b y + c; the depth likewise
    a1, b1 = (y2 - y0) / d, (x0 - x2) / d
    a2, b2 = (y0 - y1) / d, (x1 - x0) / d
    c1, c2 = -(a1 * x0 + b1 * y0), -(a2 * x0 + b2 * y0)
    edges = ((a1, b1, c1), (a2, b2, c2), (-a1 - a2, -b1 - b2, 1 - c1 - c2))
    ta = a1 * (t1 - t0) + a2 * (t2 - t0)
    tb = b1 * (t1 - t0) + b2 * (t2 - t0)
    tc = t0 + c1 * (t1 - t0) + c2 * (t2 - t0)
    # l_k >= -eps on row y: x >= p + q y where a_k > 0, x <= p + q y where a_k < 0 (a_k = 0: a horizontal
    # edge, which the triangle's rows already respect)
    eps = 1e-6
    lows, highs = [], []
    for a, b, c in edges:
        safe = np.where(a == 0, 1.0, a)
        p, q = (-eps - c) / safe, -b / safe
        lows.append((np.where(a > 0, p, -np.inf), np.where(a > 0, q, 0.0)))
        highs.append((np.where(a < 0, p, np.inf), np.where(a < 0, q, 0.0)))
    rows = (bottom - top + 1).astype(np.int64)
    tri = np.repeat(np.arange(len(rows)), rows)
    y = np.arange(len(tri), dtype=np.float64) - np.repeat(np.cumsum(rows) - rows - top, rows)
    lo = np.maximum(
        np.maximum(lows[0][0][tri] + lows[0][1][tri] * y, lows[1][0][tri] + lows[1][1][tri] * y),
        lows[2][0][tri] + lows[2][1][tri] * y,
    )
    hi = np.minimum(
        np.minimum(highs[0][0][tri] + highs[0][1][tri] * y, highs[1][0][tri] + highs[1][1][tri] * y),
        highs[2][0][tri] + highs[2][1][tri] * y,
    )
    first = np.maximum(np.ceil(lo), 0)
    span = np.maximum(np.minimum(np.floor(hi), gw - 1) - first + 1, 0).astype(np.int64)
    # texels: each row's span, from its first texel
    slope = ta[tri]
    start_depth = (tc[tri] + tb[tri] * y + slope * first).astype(np.float32)
    start_index = (y * gw + first).astype(np.int64)
    row = np.repeat(np.arange(len(span)), span)
    k = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(span) - span, span)
    depth = start_depth[row] + slope.astype(np.float32)[row] * k.astype(np.float32)
    np.maximum.at(grid, start_index[row] + k, depth)
    return grid.reshape(gh, gw)


def occlusion(
    points: np.ndarray,
    normals: np.ndarray,
    meshes: list,
    to_light,
    texel: float,
    params: ShadowParams = ShadowParams(),
    light_size: float = 0.0,
) -> np.ndarray:
    """(N,) float32 in [0, 1]: how much of the light toward ``to_light`` (camera space, directional) each
    receiver misses behind the occluders (1: fully in shadow). ``points`` (3, N): the receivers' camera-space
    coordinates (x, y, z rows), metres, on the surface; ``normals`` (3, N): their unit outward normals;
    ``meshes``: [(vertices (V, 3), faces (F, 3))] the occluders; ``texel``: the shadow map's texel, metres;
    ``light_size``: the tangent of the light's angular radius (0: the 3 x 3 filter's fixed soft edge; > 0:
    penumbrae that widen with the distance to the occluder) (module doc). Receivers with a non-finite
    coordinate or normal are lit (0)."""
    if not light_size >= 0.0:
        raise ValueError(f"light_size must be >= 0, got {light_size!r}")
    f32 = np.float32
    n = len(points[0])
    out = np.zeros(n, f32)
    if not n or not meshes:
        return out
    finite = np.isfinite(np.asarray(points, dtype=f32)).all(0) & np.isfinite(
        np.asarray(normals, dtype=f32)
    ).all(0)
    if not finite.all():  # a receiver that is not a point (a failed undistortion, a NaN normal) stays lit
        if finite.any():
            out[finite] = occlusion(
                np.asarray(points)[:, finite],
                np.asarray(normals)[:, finite],
                meshes,
                to_light,
                texel,
                params,
                light_size,
            )
        return out
    basis = light_basis(to_light)
    # light space of the receivers (rows of N: numpy is slow on short axes), then moved along their normals
    px, py, pz = (np.asarray(x, dtype=f32) for x in points)
    nx, ny, nz = (np.asarray(x, dtype=f32) for x in normals)
    e1, e2, el = (basis[k].astype(f32) for k in range(3))
    qa = px * e1[0] + py * e1[1] + pz * e1[2]
    qb = px * e2[0] + py * e2[1] + pz * e2[2]
    lo = np.array([qa.min(), qb.min()], dtype=np.float64)
    extent = np.array([qa.max(), qb.max()], dtype=np.float64) - lo
    pad = int(np.ceil(params.normal_offset)) + 2  # texels: the normal offset, then the filter's 3 x 3 block
    if light_size > 0:
        pad += int(math.ceil(MAX_PENUMBRA))  # the area light's widest disc
    texel = max(float(texel), float(extent.max()) / (MAX_GRID - 2 * pad - 2))
    lo -= pad * texel
    gw, gh = (int(np.ceil(e / texel)) + 2 * pad + 1 for e in extent)
    ndl = nx * el[0] + ny * el[1] + nz * el[2]
    nl = np.clip(ndl, 0.0, 1.0)
    sin = np.sqrt(1.0 - nl * nl)
    step = f32(params.normal_offset * texel) * sin
    n1 = nx * e1[0] + ny * e1[1] + nz * e1[2]  # the normals across the light's beam
    n2 = nx * e2[0] + ny * e2[1] + nz * e2[2]
    qa += step * n1
    qb += step * n2
    qt = px * el[0] + py * el[1] + pz * el[2] + step * ndl
    xy_list, t_list = [], []
    for v, f in meshes:
        v = np.asarray(v, dtype=np.float64)
        if not np.isfinite(v).all():
            continue
        # light space, element-wise (no BLAS: the same bits whatever the library or its threads)
        ql = v[:, 0:1] * basis[:, 0] + v[:, 1:2] * basis[:, 1] + v[:, 2:3] * basis[:, 2]
        tri = np.asarray(f, dtype=np.int64)
        xy_list.append((ql[tri, :2] - lo) / texel)
        t_list.append(ql[tri, 2])
    if not xy_list:
        return out
    grid = rasterize_nearest(np.concatenate(xy_list), np.concatenate(t_list), (gh, gw))
    a = (qa - f32(lo[0])) / f32(texel)
    b = (qb - f32(lo[1])) / f32(texel)
    i0 = np.rint(a)
    j0 = np.rint(b)
    centre = j0.astype(np.int64) * gw + i0.astype(np.int64)
    tan = np.minimum(sin / np.maximum(nl, f32(1e-3)), f32(MAX_SLOPE))
    depth = qt + f32(texel) * (f32(params.bias) + f32(params.slope_bias) * tan)
    if light_size > 0:
        return _area_filter(out, grid, a, b, centre, qt, depth, (n1, n2, nl), texel, float(light_size))
    # receivers that nothing in their 3 x 3 texels is nearer the light than: lit, no filter needed
    near3 = grid.copy()
    near3[1:] = np.maximum(near3[1:], grid[:-1])
    near3[:-1] = np.maximum(near3[:-1], grid[1:])
    wide = near3.copy()
    wide[:, 1:] = np.maximum(wide[:, 1:], near3[:, :-1])
    wide[:, :-1] = np.maximum(wide[:, :-1], near3[:, 1:])
    (test,) = np.nonzero(np.take(wide.ravel(), centre) > depth)
    if not len(test):
        return out
    # 3 x 3 percentage-closer filter, tent weights of radius 1.5 texels: with f the offset from the nearest
    # texel centre (|f| <= 1/2), the weights of the texels at -1, 0, 1 are 1/2 - f, 3/2 - |f|, 1/2 + f
    fa, fb = a[test] - i0[test], b[test] - j0[test]
    wx = (f32(0.5) - fa, f32(1.5) - np.abs(fa), f32(0.5) + fa)
    wy = (f32(0.5) - fb, f32(1.5) - np.abs(fb), f32(0.5) + fb)
    base = centre[test] - gw - 1  # the 3 x 3 block's first texel
    depth = depth[test]
    flat = grid.ravel()
    acc = np.zeros(len(test), f32)
    for dy in range(3):
        row = np.zeros(len(test), f32)
        for dx in range(3):
            row += np.where(np.take(flat[dy * gw + dx :], base) > depth, wx[dx], f32(0.0))
        acc += row * wy[dy]
    out[test] = np.minimum(acc / ((f32(2.5) - np.abs(fa)) * (f32(2.5) - np.abs(fb))), f32(1.0))
    return out


def _disc_taps(taps, grid, a, b, depth, ga, gb, radius):
    """For each tap of the spiral ``taps`` (2, T) on discs of ``radius`` texels (scalar or (N,)) around the
    texel coordinates ``a``, ``b`` (N,): (occluded (N,) bool, the nearest texel's depth toward the light).
    Occluded: nearer the light than ``depth`` (N,) carried along the receiver's tangent plane to the texel's
    centre (``ga``, ``gb`` (N,): its rise per texel, metres). The grid's margin (``occlusion``'s pad) holds
    every tap, so no index is clipped."""
    gw = grid.shape[1]
    flat = grid.ravel()
    for du, dv in taps.T:
        i = np.rint(a + du * radius)
        j = np.rint(b + dv * radius)
        g = flat[(j * gw + i).astype(np.int64)]
        # the plane at the texel's centre, where the map holds the occluder's depth
        yield g > depth + ga * (i - a) + gb * (j - b), g


def _area_filter(
    out: np.ndarray,
    grid: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    centre: np.ndarray,
    qt: np.ndarray,
    depth: np.ndarray,
    slope: tuple,
    texel: float,
    light_size: float,
) -> np.ndarray:
    """The area light's filter (module doc) into ``out`` (N,) float32: ``grid`` (gh, gw) the shadow map;
    ``a``, ``b`` (N,) the receivers' texel coordinates; ``centre`` (N,) int64 their nearest texels' flat
    indices; ``qt`` (N,) their depth toward the light, metres, moved along the normal; ``depth`` (N,) that
    plus the biases; ``slope``: the normals' light-space components (n1, n2, n . l), each (N,); ``texel``
    metres; ``light_size`` the tangent of the light's angular radius."""
    f32 = np.float32
    gh, gw = grid.shape
    n1, n2, nl = slope
    # the tangent plane's rise toward the light per texel across the grid (metres), capped
    inv = f32(texel) / np.maximum(nl, f32(1e-3))
    ga = np.clip(-n1 * inv, f32(-AREA_SLOPE * texel), f32(AREA_SLOPE * texel))
    gb = np.clip(-n2 * inv, f32(-AREA_SLOPE * texel), f32(AREA_SLOPE * texel))
    reach = int(math.ceil(MAX_PENUMBRA))
    margin = reach + 1  # the widest tap's texel, rounded, stays on the grid (``_disc_taps`` does not clip)
    if min(a.min(), b.min()) < margin or a.max() > gw - 1 - margin or b.max() > gh - 1 - margin:
        raise RuntimeError("shadow map margin smaller than the area light's disc")  # a bug, not bad input
    # receivers that no texel within the widest disc is nearer the light than (their plane's lowest point
    # over the disc included): lit
    near = maximum_filter(grid, size=2 * reach + 1, mode="constant", cval=-np.inf).ravel()
    floor = depth - f32(reach) * (np.abs(ga) + np.abs(gb))
    (test,) = np.nonzero(near[centre] > floor)
    if not len(test):
        return out
    a, b, qt, depth, ga, gb = a[test], b[test], qt[test], depth[test], ga[test], gb[test]

    search = f32(np.clip(light_size * BLOCKER_REACH / texel, MIN_PENUMBRA, MAX_PENUMBRA))
    total = np.zeros(len(test), f32)
    count = np.zeros(len(test), f32)
    for hit, g in _disc_taps(_SEARCH, grid, a, b, depth, ga, gb, search):
        total += np.where(hit, g - qt, f32(0.0))
        count += hit
    blocker = total / np.maximum(count, f32(1))  # metres from the receiver toward its occluders
    radius = np.clip(blocker * f32(light_size / texel), f32(MIN_PENUMBRA), f32(MAX_PENUMBRA))
    # every search tap occluded and a penumbra no wider than the search: the umbra (1, no filter needed)
    umbra = (count == SEARCH_TAPS) & (radius <= search)
    out[test[umbra]] = 1.0
    (edge,) = np.nonzero((count > 0) & ~umbra)
    a, b, depth, ga, gb, radius = (x[edge] for x in (a, b, depth, ga, gb, radius))
    acc = np.zeros(len(edge), f32)
    for hit, _ in _disc_taps(_TAPS, grid, a, b, depth, ga, gb, radius):
        acc += hit
    out[test[edge]] = acc / f32(PENUMBRA_TAPS)
    return out


AO_RINGS = (0.5, 1.0)
"""The taps of ``ambient_occlusion`` lie on two rings, at these fractions of its radius."""


def ambient_occlusion(
    grid: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    normals: np.ndarray,
    focal: float,
    radius: float,
    samples: int = 12,
    bias: float = 0.002,
) -> np.ndarray:
    """Screen-space ambient occlusion: (N,) float32 in [0, 1], how much of the open sky above each receiver's
    tangent plane the surfaces around it hide (0: open, e.g. any plane, a convex surface; toward 1: deep in a
    crease, between touching fingers, under a finger lying on the palm).

    ``grid`` (H, W, 3) float32: the camera-space point (metres) of every pixel of a depth map, (0, 0, 0) where
    there is no surface; ``rows``, ``cols`` (N,) int: the receivers' pixels in it (on a surface); ``normals``
    (N, 3): their unit normals, facing the camera; ``focal``: the focal length in pixels (fx); ``radius``:
    metres. Each receiver P at depth z reads ``samples`` taps (even, at least 2) on two rings (``AO_RINGS``
    times ``radius``, in metres at its depth: ``radius * focal / z`` pixels), ``samples // 2`` evenly spread
    directions on each, the outer ring turned by half a step. A tap's point Q occludes P by the sine of its
    elevation above P's tangent plane, n . (Q - P) / |Q - P|, where it stands more than ``bias`` metres above
    the plane; the weight fades to 0 as |Q - P| grows from 2 to 3 radii (a surface far in front, the other
    hand held well before this one, casts no contact shadow). Taps off the grid or on no surface are open, as
    are receivers and taps whose points are NaN (an undistortion that did not converge). Deterministic: no
    random rotation of the pattern."""
    f32 = np.float32
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if samples < 2 or samples % 2:
        raise ValueError(f"ambient_occlusion needs an even number of samples, at least 2, got {samples}")
    out = np.zeros(len(rows), f32)
    if not len(rows):
        return out
    H, W = grid.shape[:2]
    # one contiguous array per coordinate: three 1-D gathers per tap instead of one of (N, 3) rows
    gx, gy, gz = (np.ascontiguousarray(grid[..., i], dtype=f32).ravel() for i in range(3))
    at = rows * W + cols
    px, py, pz = gx[at], gy[at], gz[at]
    n = np.asarray(normals, dtype=f32)
    nx, ny, nz = (np.ascontiguousarray(n[:, i]) for i in range(3))
    rad_px = f32(radius * float(focal)) / np.maximum(pz, f32(1e-6))
    per_ring = samples // 2
    r0, r1 = f32(2.0 * radius), f32(radius)  # fade: full weight up to 2 radii, none beyond 3
    for ring, frac in enumerate(AO_RINGS):
        for k in range(per_ring):
            a = (k + 0.5 * ring) * 2.0 * math.pi / per_ring
            du, dv = f32(math.cos(a) * frac), f32(math.sin(a) * frac)
            u = np.rint(cols + du * rad_px).astype(np.int64)
            v = np.rint(rows + dv * rad_px).astype(np.int64)
            inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
            idx = np.where(inside, v * W + u, 0)
            qz = gz.take(idx)
            dx, dy, dz = gx.take(idx) - px, gy.take(idx) - py, qz - pz
            dist = np.sqrt(dx * dx + dy * dy + dz * dz)
            h = dx * nx + dy * ny + dz * nz
            sine = h / np.maximum(dist, f32(1e-9))
            fade = np.clip(f32(1.0) - (dist - r0) / r1, f32(0.0), f32(1.0))
            hit = inside & (qz > 0) & (h > f32(bias))
            out += np.where(hit, np.clip(sine, f32(0.0), f32(1.0)) * fade, f32(0.0))
    return out / f32(2 * per_ring)
