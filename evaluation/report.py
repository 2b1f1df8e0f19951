"""``report.html``: one self-contained page (inline CSS, figures embedded as base64 PNG/JPEG, no links).

Sections: the dataset-level numbers (with the AttentionHand paper's reference values), FID/KID (or why they
were not computed), distributions of the dataset (hand type, gesture, interaction, palm facing, camera azimuth
and elevation in the hand's frame, box size, visible joints, caption length, top caption words), the
alignment scores and detection rate by box size, and a grid of the worst-aligned samples: each tile is the
image with the label skeleton (left) beside the image with the detected keypoints (right).

Charts are drawn with matplotlib when it is installed (it comes with mediapipe), else as plain PIL bar
charts; the page reads the same either way.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import math
import re
from collections.abc import Sequence

import numpy as np

from evaluation.intervals import with_interval
from evaluation.metrics import MIN_VISIBLE_JOINTS
from pipeline.gestures import FACINGS
from pipeline.schema import HAND_TYPES, SIDES

#: AttentionHand, Table 1 (text-to-image generation on MSCOCO): Hand Conf. (higher is better), MSE-2D (lower)
PAPER_REFERENCE = (
    ("Stable Diffusion", 0.651, 2.932),
    ("Uni-ControlNet", 0.855, 2.105),
    ("T2I-Adapter", 0.914, 1.546),
    ("ControlNet", 0.810, 1.252),
    ("AttentionHand (w/o TAS)", 0.955, 1.211),
    ("AttentionHand (w/ TAS)", 0.965, 1.026),
)
#: the summary's breakdowns (``evaluation.run.BREAKDOWNS``): name -> (heading, note, group column)
_BREAKDOWNS = {
    "facing": (
        "By view",
        "Eligible hands by the side of the hand that faces the camera (from the 3D label); the detector's "
        "misses depend on the view.",
        "facing",
    ),
    "gesture": ("By gesture", "Eligible hands by the gesture their 3D joints show.", "gesture"),
    "distance": (
        "By distance",
        "Eligible hands by the distance of their joints' centroid from the camera.",
        "distance",
    ),
    "object": ("By held object", "Eligible hands in samples with or without a held object.", "object"),
    "camera": (
        "By camera",
        "Eligible hands by the pose prior's camera (third-person or egocentric).",
        "camera",
    ),
    "overlap": (
        "By the other hand",
        "Eligible hands alone in their sample, or beside the other hand, with the two label boxes apart or "
        "overlapping in the image.",
        "hands",
    ),
}
STOPWORDS = frozenset(
    "a an the and or of with in on at to is are his her their its up into from by for as both".split()
)
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
_BOX_EDGES = (0, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1e9)
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; \
max-width: 1400px;
       color: #222; background: #fafafa; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 4px 10px; border: 1px solid #ddd; }
th { background: #eee; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid img { border: 1px solid #ccc; background: #fff; }
.note { color: #555; font-size: 14px; max-width: 1000px; } code { background: #eee; padding: 0 3px; }
"""


# -- charts --------------------------------------------------------------------------------------------------
def _png_b64(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str = "count",
    horizontal: bool = False,
    fmt: str = "{:g}",
    xlabel: str = "",
) -> bytes:
    """PNG bytes of a bar chart (matplotlib if installed, else PIL)."""
    labels = [str(x) for x in labels]
    values = [0.0 if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    if _have_matplotlib():
        return _bar_matplotlib(labels, values, title, ylabel, horizontal, fmt, xlabel)
    return _bar_pil(labels, values, f"{title} ({xlabel})" if xlabel else title, ylabel, fmt)


def _bar_matplotlib(labels, values, title, ylabel, horizontal, fmt, xlabel) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pos = np.arange(len(labels))
    if horizontal:
        ax.barh(pos, values, color="#4a7fb5")
        ax.set_yticks(pos, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{ylabel} ({xlabel})" if xlabel else ylabel, fontsize=8)
    else:
        bars = ax.bar(pos, values, color="#4a7fb5")
        long = len(labels) > 4 and max((len(x.split("\n")[0]) for x in labels), default=0) > 4
        ax.set_xticks(
            pos,
            labels,
            fontsize=8,
            rotation=35 if long else 0,
            ha="right" if long else "center",
        )
        ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize=8)
        if len(labels) <= 12:
            ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    # fixed margins: tight_layout would draw every figure twice (charts are most of the report's time)
    fig.subplots_adjust(
        left=0.2 if horizontal else 0.11, right=0.97, top=0.9, bottom=0.16 if horizontal else 0.3
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _bar_pil(labels, values, title, ylabel, fmt) -> bytes:
    from PIL import Image, ImageDraw

    W, H, left, bottom, top = 520, 330, 40, 70, 30
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((left, 8), title, fill="black")
    d.text((4, top), ylabel, fill="#555")
    n = max(len(labels), 1)
    vmax = max(values, default=0.0) or 1.0
    bw = (W - left - 10) / n
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        h = (H - bottom - top) * v / vmax
        x0 = left + i * bw + 2
        d.rectangle([x0, H - bottom - h, x0 + bw - 4, H - bottom], fill=(74, 127, 181))
        d.text((x0, H - bottom - h - 12), fmt.format(v), fill="black")
        d.text((x0, H - bottom + 4 + 12 * (i % 3)), lab[:10], fill="#333")
    d.line([left, H - bottom, W - 10, H - bottom], fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _counts(values, order: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
    c = collections.Counter(v for v in values if v is not None)
    keys = list(order) if order else sorted(c, key=lambda k: (-c[k], str(k)))
    keys = [k for k in keys if c.get(k)] if order else keys
    return [str(k) for k in keys], [c[k] for k in keys]


def _edge_label(lo: float, hi: float) -> str:
    return f">={lo:g}" if hi >= 1e8 else f"{lo:g}-{hi:g}"


def _binned(values, edges: Sequence[float], unit: str = "") -> tuple[list[str], list[int]]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    labels, counts = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        last = hi == edges[-1]
        n = int(((v >= lo) & ((v <= hi) if last else (v < hi))).sum())
        labels.append(_edge_label(lo, hi) + unit)
        counts.append(n)
    return labels, counts


# -- grid of the worst-aligned samples -----------------------------------------------------------------------
def _tile(raw: dict, scored: dict, tile: int = 224):
    """[image + label skeleton | image + detected keypoints] with a caption strip, as a PIL image."""
    from PIL import Image, ImageDraw

    from pipeline.schema import Label
    from sinks.preview import draw_skeleton
    from sinks.records import IMAGE_FILES, LABEL_FILE, VERTS_FILE, decode_image, find_file

    files = {k.lstrip("."): v for k, v in raw.items()}
    label = Label.from_bytes(files[LABEL_FILE], files[VERTS_FILE])
    image = decode_image(files[find_file(files, IMAGE_FILES)])
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    scale = tile / max(image.shape[:2])
    j2d = {s: None if label.hands[s] is None else label.hands[s].joints_2d for s in SIDES}
    vis = {s: None if label.hands[s] is None else label.hands[s].joints_visible for s in SIDES}
    left = draw_skeleton(image, j2d, vis, scale)
    row = scored["row"]
    dets = list(scored["detections"])
    slots: dict = {s: None for s in SIDES}
    used = set()
    for s in SIDES:  # a matched detection is drawn in its hand's style; the others fill the free slots
        k = row.get(f"{s}_detection")
        if k is not None and k < len(dets):
            slots[s] = dets[k]
            used.add(k)
    rest = [d for k, d in enumerate(dets) if k not in used]
    for s in SIDES:
        if slots[s] is None and rest:
            slots[s] = rest.pop(0)
    right = draw_skeleton(image, slots, {s: np.ones(21, bool) for s in SIDES}, scale)
    cap = 34
    out = Image.new(
        "RGB", (left.width + right.width + 4, max(left.height, right.height) + cap), (255, 255, 255)
    )
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 4, 0))
    d = ImageDraw.Draw(out)
    parts = []
    for s in SIDES:
        if not row.get(f"{s}_present"):
            continue
        tag = s[0].upper()
        pck01 = row.get(f"{s}_pck_01", float("nan"))
        if row.get(f"{s}_detected"):
            found = f"PCK@0.1 {pck01:.2f}"
        else:
            found = "missed"
        parts.append(f"{tag}: {found}" if row.get(f"{s}_eligible") else f"{tag}: not judged ({found})")
    d.text((4, out.height - cap + 2), f"{row['key']}  alignment {row['alignment']:.2f}", fill=(0, 0, 0))
    d.text((4, out.height - cap + 17), "  ".join(parts) + f"  ({len(dets)} detections)", fill=(60, 60, 60))
    return out


def worst_grid(items: list[tuple[dict, dict]], per_row: int = 3) -> bytes | None:
    """JPEG bytes of the worst-aligned samples' tiles (None when there are none)."""
    from PIL import Image

    tiles = [_tile(raw, scored) for raw, scored in items]
    if not tiles:
        return None
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / per_row)
    sheet = Image.new("RGB", (per_row * (tw + 8), rows * (th + 8)), (250, 250, 250))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % per_row) * (tw + 8), (i // per_row) * (th + 8)))
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# -- the page ------------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(rows: Sequence[Sequence], head: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
    for r in rows:
        cells = []
        for c in r:
            num = c is None or (isinstance(c, (int, float)) and not isinstance(c, bool))  # None: n/a
            cells.append(f"<td class='num'>{_fmt(c)}</td>" if num else f"<td>{html.escape(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f"<img alt='{html.escape(alt)}' src='{_png_b64(data, mime)}'>"


def figures(rows: list[dict], captions: list[str], settings: dict) -> list[tuple[str, bytes]]:
    """(title, PNG bytes) of the report's distribution charts."""
    ok = [r for r in rows if r.get("status") in ("ok", "unreadable") and "hand_type" in r]
    hands = [(r, s) for r in ok for s in SIDES if r.get(f"{s}_present")]
    charts: list[tuple[str, tuple, dict]] = []  # (title, (labels, values), bar_chart options)

    def add(title: str, data: tuple, **kw) -> None:
        charts.append((title, data, kw))

    add("Hand type", _counts([r["hand_type"] for r in ok], HAND_TYPES), xlabel="samples")
    add("Gesture", _counts([r[f"{s}_gesture"] for r, s in hands]), xlabel="hands, from the 3D label")
    two = [r["interaction"] for r in ok if r.get("interaction") != "single"]
    add("Interaction", _counts(two, ("clasped", "touching", "apart")), xlabel="two-hand samples")
    add(
        "Palm facing",
        _counts([r[f"{s}_facing"] for r, s in hands], FACINGS),
        xlabel="which side of the hand faces the camera",
    )
    add(
        "Camera azimuth",
        _binned([r[f"{s}_azimuth"] for r, s in hands], list(range(-180, 181, 30))),
        xlabel="degrees in the hand frame: 0 fingertips, +90 thumb side, 180 wrist",
    )
    add(
        "Camera elevation",
        _binned([r[f"{s}_elevation"] for r, s in hands], list(range(-90, 91, 15))),
        xlabel="degrees in the hand frame: +90 palm, -90 back of the hand",
    )
    add(
        "Hand box size",
        _binned([r.get(f"{s}_box_px") for r, s in hands], _BOX_EDGES),
        xlabel="longer side of the label box, px",
    )
    vj = collections.Counter(r.get(f"{s}_visible_joints") for r, s in hands)
    add(
        "Visible joints",
        ([str(i) for i in range(22)], [vj.get(i, 0) for i in range(22)]),
        xlabel="visible joints per hand (of 21)",
    )
    add(
        "Caption length",
        _binned([r.get("caption_words") for r in ok], [0, 5, 10, 15, 20, 25, 30, 40, 60, 1e9]),
        xlabel="words",
    )
    words = collections.Counter(w for c in captions for w in _WORDS.findall(c.lower()) if w not in STOPWORDS)
    top = words.most_common(20)
    add(
        "Top caption words",
        ([w for w, _ in top], [n for _, n in top]),
        horizontal=True,
        xlabel="stop words left out",
    )
    assessed = [r["alignment"] for r in rows if r.get("assessed")]
    add(
        "Alignment",
        _binned(assessed, [i / 10 for i in range(11)]),
        ylabel="samples",
        xlabel="sample alignment (assessed samples)",
    )
    nv = settings.get("min_visible_joints", MIN_VISIBLE_JOINTS)
    labels, rates = [], []
    for lo, hi in zip(_BOX_EDGES[:-1], _BOX_EDGES[1:], strict=True):
        sel = [
            bool(r.get(f"{s}_detected"))
            for r, s in hands
            if (r.get(f"{s}_visible_joints") or 0) >= nv and lo <= (r.get(f"{s}_box_px") or -1) < hi
        ]
        if sel:
            labels.append(f"{_edge_label(lo, hi)}\n(n={len(sel)})")
            rates.append(float(np.mean(sel)))
    add(
        "Detection rate by box size",
        (labels, rates),
        ylabel="detected",
        fmt="{:.2f}",
        xlabel=f"box longer side, px (hands with >= {nv} visible joints)",
    )
    return [(title, bar_chart(*data, title, **kw)) for title, data, kw in charts]


def _joint_section(s: dict) -> list[str]:
    """The keypoint-by-keypoint table (``summary['by_joint']``, ``by_joint_facing``), or nothing."""
    joints = s.get("by_joint") or {}
    if not any(v["visible"] for v in joints.values()):
        return []
    facing = s.get("by_joint_facing") or {}
    views = [f for f, t in facing.items() if any(v["visible"] for v in t.values())]
    rows = [
        (
            name,
            v["visible"],
            _fmt(v["error"]),
            _fmt(v["pck_01"], 2),
            _fmt(v["along"]),
            _fmt(v["across"]),
            *(_fmt(facing[f][name]["pck_01"], 2) for f in views),
        )
        for name, v in joints.items()
    ]
    head = (
        "joint",
        "visible",
        "error / box",
        "PCK@0.1",
        "along",
        "across",
        *(f"PCK@0.1, {f}" for f in views),
    )
    note = (
        "Each keypoint of the detected eligible hands against its label, over the joints the label shows: "
        "the mean error over the box's longer side, the share under 0.1 of it, and the mean signed offset "
        "along the hand (+: toward the fingertips, from the label's wrist toward its middle knuckle) and "
        "across it (+: toward the thumb's side). A steady offset of one joint in every view points to a "
        "difference of convention between detector and labels (where each puts the wrist or the knuckles); "
        "errors that grow in one view, to what that view shows."
    )
    return [f"<h3>By keypoint</h3><p class='note'>{note}</p>", _table(rows, head)]


def render(summary: dict, rows: list[dict], captions: list[str], worst: list[tuple[dict, dict]]) -> str:
    """The whole page as one string."""
    s = summary
    st = s.get("settings", {})
    rule = (
        f">= {st.get('min_visible_joints')} visible joints and a box of >= {st.get('min_box_px'):g} px "
        "(longer side)"
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>handgen evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Is this dataset any good? <small>{html.escape(str(s.get('run', '')))}</small></h1>",
        f"<p class='note'>{s['samples']} samples scored by <code>{html.escape(str(st.get('scorer')))}</code> "
        f"({html.escape(', '.join(f'{k}={v}' for k, v in st.items() if k != 'scorer'))}). "
        f"A labelled hand is judged (eligible) when it has {html.escape(rule)}. Detections are matched to "
        "labelled hands by keypoints, not by handedness. Definitions: docs/evaluation.md.</p>",
        "<h2>Dataset numbers</h2>",
    ]
    passes = s.get("alignment_pass") or {}
    table = [
        (
            "samples (unreadable / bad label / bad shards)",
            f"{s['samples']} ({s['unreadable']} / {s['bad_label']} / {s['bad_shards']})",
        ),
        (
            "labelled hands / eligible / detected",
            f"{s['hands']} / {s['eligible_hands']} / {s['detected_hands']}",
        ),
        (
            "detection rate (detected / eligible hands; 95% interval, samples as clusters)",
            with_interval(s["detection_rate"], s.get("detection_rate_ci95")),
        ),
        ("Hand Conf. (Hand1000: handedness score, mean over all detected hands)", s["hand_conf"]),
        ("handedness score, mean over matched eligible hands", s["hand_conf_matched"]),
        ("PCK@0.05 (detected eligible hands)", s["pck_005"]),
        (
            "PCK@0.1 (detected eligible hands; 95% interval)",
            with_interval(s["pck_01"], s.get("pck_01_ci95")),
        ),
        ("mean keypoint error / box size (detected eligible hands)", s["error_norm"]),
        ("MSE-2D, px² (detected eligible hands)", s["mse_2d"]),
        ("handedness agreement with the label (detected eligible hands)", s["handedness_agreement"]),
        (
            "alignment: mean / median over assessed samples",
            f"{_fmt(s['alignment_mean'])} / {_fmt(s['alignment_median'])} ({s['assessed_samples']} assessed)",
        ),
        *((f"share of assessed samples with alignment >= {t}", v) for t, v in passes.items()),
        ("evaluation speed (samples/s, workers)", f"{_fmt(s.get('samples_per_s'), 1)} ({s.get('workers')})"),
    ]
    parts.append(_table(table, ("measure", "value")))
    for name, (title, note, column) in _BREAKDOWNS.items():
        groups = [
            (
                g,
                v["eligible"],
                v["detected"],
                with_interval(v["detection_rate"], v.get("detection_rate_ci95"), 2),
                with_interval(v["pck_01"], v.get("pck_01_ci95"), 2),
            )
            for g, v in (s.get(f"by_{name}") or {}).items()
            if v["eligible"]
        ]
        if groups:
            parts.append(f"<h3>{title}</h3><p class='note'>{note}</p>")
            parts.append(_table(groups, (column, "eligible", "detected", "detection rate", "PCK@0.1")))
    parts.extend(_joint_section(s))
    parts.append(
        "<p class='note'>The AttentionHand paper (Table 1, MSCOCO) reports these for text-to-image models. "
        "Its MSE-2D has no stated unit or normalisation, so only its ordering compares with ours (px²).</p>"
    )
    parts.append(_table([(n, hc, m) for n, hc, m in PAPER_REFERENCE], ("method", "Hand Conf. ↑", "MSE-2D ↓")))
    parts.append("<h2>FID / KID</h2>")
    fid = s.get("fid")
    if fid:
        keys = (
            "fid",
            "kid_mean",
            "kid_std",
            "fid_h",
            "kid_h_mean",
            "kid_h_std",
            "n_generated",
            "n_reference",
            "n_generated_hands",
            "n_reference_hands",
        )
        parts.append(_table([(k, fid.get(k)) for k in keys if k in fid], ("measure", "value")))
        if fid.get("fid_h_note"):
            parts.append(f"<p class='note'>{html.escape(str(fid['fid_h_note']))}</p>")
    else:
        parts.append(f"<p class='note'>{html.escape(str(s.get('fid_note') or 'not computed'))}</p>")
    parts.append("<h2>Distributions</h2><div class='grid'>")
    parts.extend(_img(png, title) for title, png in figures(rows, captions, st))
    parts.append("</div>")
    parts.append("<h2>Worst-aligned samples</h2>")
    grid = worst_grid(worst)
    if grid is None:
        parts.append("<p class='note'>No sample has an eligible hand.</p>")
    else:
        parts.append(
            "<p class='note'>Lowest alignment first. Left: the label skeleton (grey joints are occluded); "
            "right: what the detector found (a matched detection in its hand's style: "
            "right solid, left thin).</p>"
        )
        parts.append(_img(grid, "worst-aligned samples", "image/jpeg"))
    parts.append("</body></html>")
    return "\n".join(parts)
