"""A held-out Cityscapes-format set for the learning benchmark, made the way Cityscapes was made.

Each scene starts as a ``*_gtFine_polygons.json`` (street layouts with all 19 evaluated classes,
crowd groups such as "cargroup" and "persongroup", and about 15% void pixels as in the real set:
ego vehicle, rectification border, static, dynamic, ground, parking).
cityscapesscripts draws ``*_instanceIds.png`` and ``*_labelIds.png`` from the polygons, and
datasets/prepare_cityscapes.py (cityscapesscripts' json2labelImg and createPanopticImgs) makes
the labelTrainIds and the COCO-panoptic files, so the set is what a user's Cityscapes tree is.
The image is painted from the instanceIds PNG: every segment gets its class colour with a
per-segment shift, segment borders are darkened and pixel noise is added, so that the classes
are learnable but instances of one class must be told apart by their outlines and shapes.

This is deliberately not efficientps.data.synthetic (the demo's generator): the benchmark must
not share code with what it checks.
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

CITY = "benchcity"


def _box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _vehicle(x0, y0, x1, y1, roof=0.35):
    """A side view: body box with a narrower cabin on top."""
    w, h = x1 - x0, y1 - y0
    cabin = y0 + h * roof
    return [
        [x0, y1], [x0, cabin], [x0 + w * 0.2, cabin], [x0 + w * 0.3, y0],
        [x0 + w * 0.75, y0], [x0 + w * 0.85, cabin], [x1, cabin], [x1, y1],
    ]  # fmt: skip


def _person(x, bottom, height):
    w = max(3, height * 0.3)
    head = bottom - height
    return [
        [x - w * 0.25, head], [x + w * 0.25, head], [x + w * 0.5, head + height * 0.3],
        [x + w * 0.3, bottom], [x - w * 0.3, bottom], [x - w * 0.5, head + height * 0.3],
    ]  # fmt: skip


def _wheels(x0, x1, bottom, height):
    return [[x0, bottom - height * 0.5], [x1, bottom - height * 0.5], [x1, bottom], [x0, bottom]]


def scene_objects(rng, height, width):
    """(label, polygon) pairs of one street scene, in drawing order (later ones on top)."""
    horizon = int(height * rng.uniform(0.35, 0.5))
    curb = int(horizon + (height - horizon) * rng.uniform(0.25, 0.4))
    objects = [
        ("sky", _box(0, 0, width - 1, horizon + 4)),
        ("road", [[0, curb], [width - 1, curb], [width - 1, height - 1], [0, height - 1]]),
        ("sidewalk", _box(0, horizon, width - 1, curb)),
    ]
    # Skyline: buildings of random heights, with walls, fences and vegetation in front.
    x = 0
    while x < width:
        w = int(rng.integers(width // 10, width // 4))
        top = int(rng.uniform(0.05, 0.7) * horizon)
        objects.append(("building", _box(x, top, min(x + w, width - 1), horizon + 2)))
        x += w
    for _ in range(int(rng.integers(1, 4))):
        x0 = int(rng.integers(0, width - 20))
        w, h = int(rng.integers(12, 40)), int(rng.integers(10, 25))
        objects.append(
            ("vegetation", [[x0, horizon], [x0 + w // 2, horizon - h], [x0 + w, horizon]])
        )
    for label in ("wall", "fence", "terrain"):
        if rng.random() < 0.8:
            x0 = int(rng.integers(0, width - 30))
            w, h = int(rng.integers(20, 60)), int(rng.integers(4, 10))
            bottom = horizon + 2 if label != "terrain" else curb
            objects.append((label, _box(x0, bottom - h, x0 + w, bottom)))
    # Poles with a traffic sign or light on top.
    for _ in range(int(rng.integers(1, 4))):
        x0 = int(rng.integers(4, width - 8))
        top = int(rng.uniform(0.2, 0.6) * horizon)
        objects.append(("pole", _box(x0, top, x0 + 2, curb - 2)))
        head = "traffic light" if rng.random() < 0.5 else "traffic sign"
        objects.append((head, _box(x0 - 3, top - 6, x0 + 5, top)))
    # Crowd regions in the distance.
    if rng.random() < 0.6:
        x0 = int(rng.integers(0, width - 60))
        objects.append(("cargroup", _box(x0, curb - 10, x0 + int(rng.integers(30, 60)), curb + 4)))
    if rng.random() < 0.5:
        x0 = int(rng.integers(0, width - 30))
        objects.append(
            ("persongroup", _box(x0, horizon - 8, x0 + int(rng.integers(12, 30)), curb - 4))
        )
    objects += _void_patches(rng, height, width, horizon)
    objects += _things(rng, height, width, horizon, curb)
    objects += _void_frame(rng, height, width)
    return objects


def _void_patches(rng, height, width, horizon):
    """Unevaluated ground-level regions (static, dynamic, ground, parking), under the things."""
    patches = []
    for label in ("ground", "parking", "static", "dynamic"):
        for _ in range(int(rng.integers(0, 3))):
            x0 = int(rng.integers(0, width - 20))
            w, h = int(rng.integers(8, 40)), int(rng.integers(4, 14))
            bottom = int(rng.uniform(horizon + h, height - 10))
            patches.append((label, _box(x0, bottom - h, x0 + w, bottom)))
    return patches


def _void_frame(rng, height, width):
    """The ego vehicle's bonnet and the rectification border, on top of everything."""
    ego_top = height - int(rng.integers(8, 18))
    frame = [("ego vehicle", [[0, height - 1], [0, ego_top + 4], [width // 3, ego_top],
                              [2 * width // 3, ego_top], [width - 1, ego_top + 4],
                              [width - 1, height - 1]])]  # fmt: skip
    border = int(rng.integers(1, 4))
    for box in (_box(0, 0, width - 1, border), _box(0, 0, border, height - 1),
                _box(width - 1 - border, 0, width - 1, height - 1)):  # fmt: skip
        frame.append(("rectification border", box))
    return frame


def _things(rng, height, width, horizon, curb):
    """Vehicles on the road and people on the sidewalk, far ones first (drawn under near ones)."""
    things = []
    for _ in range(int(rng.integers(2, 7))):
        bottom = rng.uniform(curb + 6, height - 2)
        scale = (bottom - horizon) / (height - horizon)
        kind = rng.choice(
            ["car", "car", "car", "truck", "bus", "train"], p=[0.25, 0.25, 0.2, 0.12, 0.1, 0.08]
        )
        length = {"car": 60, "truck": 80, "bus": 110, "train": 180}[kind] * scale
        tall = {"car": 30, "truck": 45, "bus": 50, "train": 55}[kind] * scale
        x0 = rng.uniform(-length * 0.2, width - length * 0.8)
        polygon = (
            _vehicle(x0, bottom - tall, x0 + length, bottom)
            if kind == "car"
            else _box(x0, bottom - tall, x0 + length, bottom)
        )
        things.append((bottom, kind, polygon))
    for _ in range(int(rng.integers(1, 6))):
        bottom = rng.uniform(horizon + 4, curb + 10)
        scale = (bottom - horizon + 10) / (height - horizon)
        x = rng.uniform(5, width - 5)
        tall = 45 * scale
        if rng.random() < 0.35:  # a rider on a bicycle or motorcycle
            ride = "bicycle" if rng.random() < 0.6 else "motorcycle"
            things.append(
                (bottom, ride, _wheels(x - tall * 0.4, x + tall * 0.4, bottom, tall * 0.6))
            )
            things.append((bottom + 0.01, "rider", _person(x, bottom - tall * 0.2, tall * 0.8)))
        else:
            things.append((bottom, "person", _person(x, bottom, tall)))
    if rng.random() < 0.4:  # a parked bicycle without rider
        bottom = rng.uniform(horizon + 6, curb)
        x = rng.uniform(10, width - 10)
        things.append((bottom, "bicycle", _wheels(x - 8, x + 8, bottom, 14)))
    things.sort(key=lambda t: t[0])
    return [(label, _clipped(polygon, height, width)) for _, label, polygon in things]


def _clipped(polygon, height, width):
    return [[float(np.clip(x, 0, width - 1)), float(np.clip(y, 0, height - 1))] for x, y in polygon]


def paint_image(instance_ids, rng):
    """An RGB image from an instanceIds map: class colours, per-segment shifts, dark borders."""
    from cityscapesscripts.helpers.labels import id2label

    image = np.zeros(instance_ids.shape + (3,), np.float32)
    for segment in np.unique(instance_ids):
        label_id = segment // 1000 if segment >= 1000 else segment
        colour = np.array(id2label[int(label_id)].color, np.float32)
        shift = rng.uniform(-30, 30, 3)
        image[instance_ids == segment] = np.clip(colour + shift, 0, 255)
    ids = instance_ids.astype(np.int32)
    border = np.zeros(ids.shape, bool)
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    border[1:, :] |= ids[1:, :] != ids[:-1, :]
    image[border] *= 0.5
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_scene(root, split, index, rng, size):
    """Polygons json -> instanceIds/labelIds PNGs (cityscapesscripts) -> the painted image."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    height, width = size
    name = f"{CITY}_{index:06d}_000019"
    gt_dir = Path(root) / "gtFine" / split / CITY
    image_dir = Path(root) / "leftImg8bit" / split / CITY
    gt_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    objects = scene_objects(rng, height, width)
    polygon_path = gt_dir / f"{name}_gtFine_polygons.json"
    polygon_path.write_text(
        json.dumps(
            {
                "imgHeight": height,
                "imgWidth": width,
                "objects": [{"label": label, "polygon": poly} for label, poly in objects],
            }
        )
    )
    annotation = Annotation()
    annotation.fromJsonFile(str(polygon_path))
    # json2instanceImg's own save() needs Pillow < 13 (mode "I" PNG); the official files are
    # 16-bit PNGs of its drawing, written here with OpenCV.
    instance_ids = np.asarray(createInstanceImage(annotation, "ids"), np.uint16)
    cv2.imwrite(str(gt_dir / f"{name}_gtFine_instanceIds.png"), instance_ids)
    json2labelImg(str(polygon_path), str(gt_dir / f"{name}_gtFine_labelIds.png"), "ids")
    image = paint_image(instance_ids, rng)
    cv2.imwrite(str(image_dir / f"{name}_leftImg8bit.png"), image[:, :, ::-1])


def make_cityscapes_set(root, num_train=120, num_val=30, size=(128, 256), seed=2026):
    """The whole tree under ``root`` (= $DETECTRON2_DATASETS/cityscapes), skipped if complete."""
    prepare = _prepare_script()
    done = Path(root) / "gtFine" / "cityscapes_panoptic_val.json"
    stamp = Path(root) / "benchmark_set.json"
    wanted = {"num_train": num_train, "num_val": num_val, "size": list(size), "seed": seed,
              "version": 2}  # fmt: skip
    if done.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for index in tqdm(range(count), desc=f"scenes {split}", unit="scene"):
            write_scene(root, split, index, rng, size)
    prepare.make_train_id_labels(root)
    prepare.make_panoptic(root)
    stamp.write_text(json.dumps(wanted))
    return root


def _prepare_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "datasets" / "prepare_cityscapes.py"
    spec = importlib.util.spec_from_file_location("prepare_cityscapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("output", "learning", "cityscapes")
    print(make_cityscapes_set(out))
