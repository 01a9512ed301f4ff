"""Procedurally drawn street scenes in Cityscapes-panoptic COCO format: the embedded dataset.

Stuff (sky, building, vegetation, sidewalk, road) are textured regions; things (person, car,
bus) are shapes whose size grows towards the bottom of the image and that occlude each other
(drawn far to near). Category ids are Cityscapes label ids, segment ids Cityscapes' (stuff:
label id; things: label id * 1000 + k), files laid out as Cityscapes':

    {out}/leftImg8bit/{split}/synth/{name}_leftImg8bit.png
    {out}/gtFine/cityscapes_panoptic_{split}/{name}_gtFine_panoptic.png
    {out}/gtFine/cityscapes_panoptic_{split}.json

Deterministic per seed. CLI: ``python -m efficientps.data.synthetic --out DIR``.
"""

import argparse
import json
import os
import time

import cv2
import numpy as np
from tqdm import tqdm

from efficientps_pq.panoptic_ids import id_to_rgb

# (label id, name, label colour, isthing): a subset of Cityscapes' classes with their ids.
CATEGORIES = [
    {"id": 7, "name": "road", "color": [128, 64, 128], "isthing": 0},
    {"id": 8, "name": "sidewalk", "color": [244, 35, 232], "isthing": 0},
    {"id": 11, "name": "building", "color": [70, 70, 70], "isthing": 0},
    {"id": 21, "name": "vegetation", "color": [107, 142, 35], "isthing": 0},
    {"id": 23, "name": "sky", "color": [70, 130, 180], "isthing": 0},
    {"id": 24, "name": "person", "color": [220, 20, 60], "isthing": 1},
    {"id": 26, "name": "car", "color": [0, 0, 142], "isthing": 1},
    {"id": 28, "name": "bus", "color": [0, 60, 100], "isthing": 1},
]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR, BUS = (c["id"] for c in CATEGORIES)
SPLITS = {"train": 0, "val": 1}
# An object stays only if at least this fraction of it is visible after later (nearer) ones.
MIN_VISIBLE_FRACTION = 0.4
MIN_INSTANCE_AREA = 24


def _noise(rng, shape, sigma):
    return rng.normal(0.0, sigma, size=shape)


class SceneCanvas:
    """An RGB float image and an int32 segment-id map drawn together."""

    def __init__(self, height, width):
        self.image = np.zeros((height, width, 3), np.float32)
        self.ids = np.zeros((height, width), np.int32)

    def paint(self, mask, segment_id, color, rng, texture=8.0):
        self.image[mask] = np.asarray(color, np.float32) + _noise(
            rng, (int(mask.sum()), 3), texture
        )
        self.ids[mask] = segment_id


def _draw_stuff(canvas, rng):
    h, w = canvas.ids.shape
    rows = np.arange(h)[:, None] * np.ones((1, w))
    horizon = int(h * rng.uniform(0.38, 0.5))
    sidewalk_end = horizon + int(h * rng.uniform(0.06, 0.14))

    sky = rows < horizon
    canvas.paint(sky, SKY, (135, 185, 230) + rng.uniform(-20, 20, 3), rng, texture=4)
    canvas.image[sky] += (rows[sky] / max(horizon, 1) * 30)[:, None]  # brighter at horizon

    x = 0
    while x < w:  # a row of buildings of random width and height, with windows
        bw = int(w * rng.uniform(0.08, 0.22))
        top = int(horizon * rng.uniform(0.05, 0.7))
        block = np.zeros((h, w), bool)
        block[top:horizon, x : x + bw] = True
        base = rng.uniform(70, 150) + rng.uniform(-25, 25, 3)
        canvas.paint(block, BUILDING, base, rng, texture=6)
        step = max(4, bw // 5)
        for wy in range(top + step // 2, horizon - step // 2, step):
            for wx in range(x + step // 3, x + bw - step // 2, step):
                canvas.image[wy : wy + step // 2, wx : wx + step // 3] = base * 0.45
        x += bw

    for _ in range(rng.integers(1, 4)):  # trees and hedges in front of the buildings
        center = (int(rng.uniform(0, w)), int(horizon - h * rng.uniform(0.0, 0.12)))
        axes = (int(w * rng.uniform(0.05, 0.14)), int(h * rng.uniform(0.06, 0.16)))
        blob = np.zeros((h, w), np.uint8)
        cv2.ellipse(blob, center, axes, 0, 0, 360, 1, -1)
        canvas.paint(blob.astype(bool), VEGETATION, (60, 120, 40), rng, texture=22)

    sidewalk = (rows >= horizon) & (rows < sidewalk_end)
    canvas.paint(sidewalk, SIDEWALK, (190, 170, 175) + rng.uniform(-15, 15, 3), rng, texture=7)
    canvas.image[horizon:sidewalk_end:4] *= 0.85  # paving lines

    road = rows >= sidewalk_end
    canvas.paint(road, ROAD, (85, 85, 90) + rng.uniform(-15, 15, 3), rng, texture=9)
    lane = int((sidewalk_end + h) / 2)
    for dash in range(int(rng.uniform(0, 20)), w, 40):
        canvas.image[lane : lane + 2, dash : dash + 20] = (220, 220, 210)
    return horizon


def _shape_mask(kind, h, w, x0, y1, size, rng):
    """Mask of one object whose bottom centre is (x0, y1); parts painted by _paint_thing."""
    mask = np.zeros((h, w), np.uint8)
    if kind == PERSON:
        height = size
        width = max(3, int(height * 0.32))
        body_top = y1 - int(height * 0.82)
        cv2.ellipse(
            mask, (x0, (body_top + y1) // 2), (width // 2, (y1 - body_top) // 2), 0, 0, 360, 1, -1
        )
        cv2.circle(mask, (x0, body_top - int(height * 0.08)), max(2, int(height * 0.1)), 1, -1)
        return mask.astype(bool), (x0 - width // 2, y1 - height, x0 + width // 2, y1)
    ratio = 0.5 if kind == CAR else 0.62
    width = size
    height = int(width * ratio)
    x_left, y_top = x0 - width // 2, y1 - height
    cv2.rectangle(mask, (x_left, y_top + height // 4), (x_left + width, y1 - height // 8), 1, -1)
    roof_inset = width // 6 if kind == CAR else 0
    cv2.rectangle(mask, (x_left + roof_inset, y_top), (x_left + width - roof_inset, y1), 1, -1)
    for wheel_x in (x_left + width // 5, x_left + 4 * width // 5):
        cv2.circle(mask, (wheel_x, y1 - height // 8), max(2, height // 7), 1, -1)
    return mask.astype(bool), (x_left, y_top, x_left + width, y1)


def _paint_thing(canvas, kind, mask, box, segment_id, rng):
    x_left, y_top, x_right, y1 = box
    if kind == PERSON:
        canvas.paint(mask, segment_id, rng.uniform(20, 230, 3), rng, texture=10)
        head = mask.copy()
        head[int(y_top + (y1 - y_top) * 0.2) :] = False
        canvas.image[head] = (205, 160, 130) + _noise(rng, (int(head.sum()), 3), 6)
        return
    body = (200, 40, 30) if kind == BUS and rng.random() < 0.5 else rng.uniform(15, 240, 3)
    canvas.paint(mask, segment_id, body, rng, texture=6)
    height = y1 - y_top
    band = np.zeros_like(mask)
    band[y_top + height // 8 : y_top + height // 3, x_left + 2 : x_right - 2] = True
    canvas.image[band & mask] = (40, 50, 60)  # windows
    wheels = mask.copy()
    wheels[: y1 - height // 5] = False
    canvas.image[wheels] = (20, 20, 20)


def draw_scene(rng, height, width):
    """One scene: (uint8 RGB image, int32 segment ids)."""
    canvas = SceneCanvas(height, width)
    horizon = _draw_stuff(canvas, rng)
    objects = []
    for _ in range(rng.integers(2, 9)):
        kind = rng.choice([PERSON, CAR, CAR, BUS], p=[0.4, 0.25, 0.25, 0.1])
        y1 = int(rng.uniform(horizon + 0.08 * height, height + 0.05 * height))
        depth = (y1 - horizon) / max(height - horizon, 1)  # 0 at the horizon, 1 at the bottom
        scale = 0.35 + 0.65 * depth
        if kind == PERSON:
            size = int(height * rng.uniform(0.22, 0.34) * scale)
        elif kind == CAR:
            size = int(width * rng.uniform(0.14, 0.24) * scale)
        else:
            size = int(width * rng.uniform(0.28, 0.4) * scale)
        objects.append((y1, kind, int(rng.uniform(0, width)), size))
    counters = {PERSON: 0, CAR: 0, BUS: 0}
    drawn = []  # (segment id, full area) of the objects on the canvas
    for y1, kind, x0, size in sorted(objects):  # far (small y) first: near ones occlude
        mask, box = _shape_mask(kind, height, width, x0, y1, size, rng)
        if mask.sum() < MIN_INSTANCE_AREA:
            continue
        saved = (canvas.image.copy(), canvas.ids.copy())
        segment_id = kind * 1000 + counters[kind]
        _paint_thing(canvas, kind, mask, box, segment_id, rng)
        visible = [(canvas.ids == sid).sum() / area for sid, area in drawn]
        if visible and min(visible) < MIN_VISIBLE_FRACTION:
            canvas.image, canvas.ids = saved  # would hide an earlier object: skip this one
            continue
        counters[kind] += 1
        drawn.append((segment_id, int(mask.sum())))
    image = canvas.image * rng.uniform(0.8, 1.15) + _noise(rng, canvas.image.shape, 3)
    return np.clip(image, 0, 255).astype(np.uint8), canvas.ids


def segments_of(ids):
    category_of = {c["id"]: c for c in CATEGORIES}
    segments = []
    for sid in np.unique(ids):
        mask = ids == sid
        ys, xs = np.nonzero(mask)
        label = int(sid) if sid < 1000 else int(sid) // 1000
        segments.append(
            {
                "id": int(sid),
                "category_id": label,
                "area": int(mask.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                "iscrowd": 0,
            }
        )
        assert label in category_of
    return segments


def generate_split(out, split, num_images, *, seed=0, size=(256, 512), progress=True):
    """Write ``num_images`` scenes of ``split``; returns the json path."""
    height, width = size
    image_dir = os.path.join(out, "leftImg8bit", split, "synth")
    panoptic_dir = os.path.join(out, "gtFine", f"cityscapes_panoptic_{split}")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(panoptic_dir, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=f"synthetic {split}", disable=not progress):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        image, ids = draw_scene(rng, height, width)
        name = f"synth_{seed:03d}_{SPLITS[split]}{i:05d}"
        cv2.imwrite(os.path.join(image_dir, f"{name}_leftImg8bit.png"), image[:, :, ::-1])
        panoptic_name = f"{name}_gtFine_panoptic.png"
        cv2.imwrite(os.path.join(panoptic_dir, panoptic_name), id_to_rgb(ids)[:, :, ::-1])
        images.append(
            {"id": name, "file_name": f"{name}_leftImg8bit.png", "height": height, "width": width}
        )
        annotations.append(
            {"image_id": name, "file_name": panoptic_name, "segments_info": segments_of(ids)}
        )
    categories = [dict(c, supercategory="synthetic") for c in CATEGORIES]
    json_path = os.path.join(out, "gtFine", f"cityscapes_panoptic_{split}.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="256x512", help="HxW")
    args = parser.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) >= 32
    except (ValueError, AssertionError):
        parser.error(f"--size must be HxW with both >= 32, got {args.size!r}")
    start = time.perf_counter()
    for split, n in (("train", args.num_train), ("val", args.num_val)):
        generate_split(args.out, split, n, seed=args.seed, size=size)
    elapsed = time.perf_counter() - start
    total = args.num_train + args.num_val
    print(f"wrote {total} scenes of {size[0]}x{size[1]} to {args.out} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
