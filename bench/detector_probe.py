"""What the hand detector reacts to: the images of a run, changed one way at a time, detected again.

For every record of ``--run`` with at least one eligible hand (``evaluation.metrics.eligible``: 15 visible
joints, a 48 px box), each probe changes the image (and, for a flip, the labels with it), runs MediaPipe Hands
(``evaluation.detector.HandDetector``) and matches detections to labelled hands by keypoints
(``evaluation.metrics.match_hands``, as ``hands evaluate`` does). The same images go through every probe,
so the rows are paired: a difference between two rows is the probe's, not the sample draw's.

Probes: ``none``; ``low_thresholds`` (the detector's two thresholds 0.1 instead of 0.5), ``low_palm`` (the
palm detector's alone) and ``low_presence`` (the landmark model's hand-presence threshold alone); ``flip``
(mirrored image and labels); ``gray``; ``desaturate`` (halfway to grey); ``saturate`` and ``contrast``
(x1.4, PIL); ``crop2x`` (a square of twice the hands' box, resized to the image size); ``sharpen``
(unsharp mask); ``blur1``/``blur2`` (Gaussian, sigma px); ``half`` (down to half size and back);
``median3``; ``blur_hand``/``blur_background`` (sigma 2 on the hand mask grown by 4 px, feathered, or on
the rest); ``blur_interior``/``blur_band`` (sigma 2 on the mask shrunk by 3 px, or on the band of 3 px
either side of its edge). The hand mask holds the hands only (never a forearm or object). ``upright`` and
``upside_down`` turn the image about the hands' centre until their axis (wrist to the middle finger's
knuckle) points up (the arm from below, as in most photos) or down; ``rotate_random`` turns it by a random
angle per image, their control for the resampling and the filled corners.

Usage: python bench/detector_probe.py --run DIR [--run DIR2 ...] [--probes none,blur2,...]
"""

from __future__ import annotations

import argparse
import time

import _benchpath  # noqa: F401 - first: fixes the import path
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from evaluation.detector import HandDetector
from evaluation.metrics import eligible, match_hands
from sinks.records import decode_record, iter_records, resolve_shards


def _records(runs):
    """[(image (H, W, 3) uint8, mask (H, W) uint8, labels side -> (joints_2d, visible, bbox), eligible
    sides)] of the records with an eligible hand."""
    out = []
    for run in runs:
        for url in resolve_shards(run):
            for files in iter_records(url):
                d = decode_record(files)
                labels = {
                    s: (np.asarray(h.joints_2d), np.asarray(h.joints_visible), np.asarray(h.bbox))
                    for s, h in d["label"].hands.items()
                    if h is not None
                }
                sides = [s for s, (_, vis, box) in labels.items() if eligible(vis, box)]
                if sides:
                    out.append((d["image"], d["mask"], labels, sides))
    return out


def _pil(fn):
    return lambda img, mask, labels: (np.asarray(fn(Image.fromarray(img))), labels)


def _blend(img, blurred, w):
    w = w.astype(np.float32)[..., None]
    return (img * (1 - w) + blurred * w + 0.5).astype(np.uint8)


def _region(which: str, sigma: float = 2.0):
    def probe(img, mask, labels):
        b = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)), np.float32)
        m = mask > 0
        if which in ("hand", "background"):
            w = ndimage.gaussian_filter(ndimage.binary_dilation(m, iterations=4).astype(np.float32), 1.5)
            w = w if which == "hand" else 1 - w
        elif which == "interior":
            w = ndimage.binary_erosion(m, iterations=3)
        else:  # the silhouette's band
            w = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_erosion(m, iterations=3)
        return _blend(img, b, w), labels

    return probe


def _flip(img, mask, labels):
    W = img.shape[1]
    flipped = {
        s: (np.c_[W - 1 - j[:, 0], j[:, 1]], v, np.array([W - 1 - b[2], b[1], W - 1 - b[0], b[3]]))
        for s, (j, v, b) in labels.items()
    }
    return img[:, ::-1].copy(), flipped


def _gray(img, mask, labels):
    g = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2), labels


def _desaturate(img, mask, labels):
    f = img.astype(np.float32)
    g = f @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(g[..., None] + 0.5 * (f - g[..., None]) + 0.5, 0, 255).astype(np.uint8), labels


def _crop2x(img, mask, labels):
    H, W = img.shape[:2]
    boxes = np.array([b for _, _, b in labels.values()])
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    half = max(x1 - x0, y1 - y0)  # the square's half side: twice the box
    ox, oy = (x0 + x1) / 2 - half, (y0 + y1) / 2 - half
    k = W / (2 * half)
    im = Image.fromarray(img).transform((W, H), Image.AFFINE, (1 / k, 0, ox, 0, 1 / k, oy), Image.BILINEAR)
    moved = {s: ((j - [ox, oy]) * k, v, (b - [ox, oy, ox, oy]) * k) for s, (j, v, b) in labels.items()}
    return np.asarray(im), moved


def _half(img, mask, labels):
    H, W = img.shape[:2]
    im = Image.fromarray(img).resize((W // 2, H // 2), Image.BILINEAR).resize((W, H), Image.BILINEAR)
    return np.asarray(im), labels


def _rotate(angle_of):
    """A probe turning the image (and labels) about the hands' centre by ``angle_of(labels, image)`` radians
    (image coordinates, y down), bilinear, the corners filled with the image's mean colour; each hand's box
    keeps its size (the gate and PCK scale), centred on its turned centre."""

    def probe(img, mask, labels):
        H, W = img.shape[:2]
        boxes = np.array([b for _, _, b in labels.values()], np.float64)
        c = np.array(
            [(boxes[:, 0].min() + boxes[:, 2].max()) / 2, (boxes[:, 1].min() + boxes[:, 3].max()) / 2]
        )
        a = angle_of(labels, img)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        back = rot.T  # output pixel -> input pixel
        off = c - back @ c
        fill = tuple(int(x) for x in img.reshape(-1, 3).mean(0))
        data = (back[0, 0], back[0, 1], off[0], back[1, 0], back[1, 1], off[1])
        im = Image.fromarray(img).transform((W, H), Image.AFFINE, data, Image.BILINEAR, fillcolor=fill)
        moved = {}
        for s, (j, v, b) in labels.items():
            jj = (np.asarray(j, np.float64) - c) @ rot.T + c
            bc = c + rot @ (np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) - c)
            half = max(b[2] - b[0], b[3] - b[1]) / 2
            moved[s] = (jj, v, np.array([bc[0] - half, bc[1] - half, bc[0] + half, bc[1] + half]))
        return np.asarray(im), moved

    return probe


def _axis_angle(labels) -> float:
    """Radians (image coordinates, y down) of the hands' mean axis, wrist to the middle finger's knuckle."""
    axes = [np.asarray(j[9], float) - np.asarray(j[0], float) for j, _, _ in labels.values()]
    mean = np.sum([a / max(np.linalg.norm(a), 1e-9) for a in axes], axis=0)
    return float(np.arctan2(mean[1], mean[0]))


def _to_direction(target: float):
    """The angle that turns the hands' axis to ``target`` radians (image coordinates: -pi/2 is up)."""
    return lambda labels, img: target - _axis_angle(labels)


def _random_angle(labels, img) -> float:
    """A uniform angle, seeded by the image's bytes (the same image gets the same angle)."""
    seed = int.from_bytes(
        np.asarray(img[:: max(1, img.shape[0] // 16), ::7]).tobytes()[:4096][::97], "little"
    )
    return float(np.random.default_rng(seed % 2**63).uniform(-np.pi, np.pi))


#: probe -> (palm detector threshold, hand-presence threshold); every other probe uses MediaPipe's 0.5, 0.5
THRESHOLDS = {"low_thresholds": (0.1, 0.1), "low_palm": (0.1, 0.5), "low_presence": (0.5, 0.1)}
PROBES = {
    "none": _pil(lambda im: im),
    "low_thresholds": _pil(lambda im: im),
    "low_palm": _pil(lambda im: im),
    "low_presence": _pil(lambda im: im),
    "flip": _flip,
    "gray": _gray,
    "desaturate": _desaturate,
    "saturate": _pil(lambda im: ImageEnhance.Color(im).enhance(1.4)),
    "contrast": _pil(lambda im: ImageEnhance.Contrast(im).enhance(1.4)),
    "crop2x": _crop2x,
    "sharpen": _pil(lambda im: im.filter(ImageFilter.UnsharpMask(2, 80, 2))),
    "blur1": _pil(lambda im: im.filter(ImageFilter.GaussianBlur(1.0))),
    "blur2": _pil(lambda im: im.filter(ImageFilter.GaussianBlur(2.0))),
    "half": _half,
    "median3": _pil(lambda im: im.filter(ImageFilter.MedianFilter(3))),
    "blur_hand": _region("hand"),
    "blur_background": _region("background"),
    "blur_interior": _region("interior"),
    "blur_band": _region("band"),
    "upright": _rotate(_to_direction(-np.pi / 2)),
    "upside_down": _rotate(_to_direction(np.pi / 2)),
    "rotate_random": _rotate(_random_angle),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run folder (repeat for several)")
    ap.add_argument("--probes", default=",".join(PROBES))
    args = ap.parse_args()
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise SystemExit(f"unknown probes {unknown}; known: {list(PROBES)}")
    items = _records(args.run)
    n = sum(len(sides) for *_, sides in items)
    print(f"{len(items)} images, {n} eligible hands ({', '.join(args.run)})")
    print("| probe | detected / eligible | rate | right | left |")
    print("|---|---|---|---|---|")
    for name in probes:
        palm, presence = THRESHOLDS.get(name, (0.5, 0.5))
        hits = {"right": [0, 0], "left": [0, 0]}
        t = time.perf_counter()
        with HandDetector(min_detection_confidence=palm, min_presence_confidence=presence) as det:
            for img, mask, labels, sides in items:
                image, moved = PROBES[name](img, mask, labels)
                matched = match_hands(moved, det.detect(image))
                for s in sides:
                    hits[s][0] += s in matched
                    hits[s][1] += 1
        found = hits["right"][0] + hits["left"][0]
        r, left = hits["right"], hits["left"]
        print(
            f"| {name} | {found} / {n} | {found / max(n, 1):.2f} | {r[0]} / {r[1]} | {left[0]} / {left[1]} |"
            f"  ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
