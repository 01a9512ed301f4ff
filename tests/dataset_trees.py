"""Small dataset trees written in each dataset's real on-disk format, for the tests.

Cityscapes ground truth starts as polygon json files, and cityscapesscripts itself draws the
instanceIds/labelIds PNGs from them (json2instanceImg, json2labelImg), exactly as the dataset's
own files were made; datasets/prepare_cityscapes.py then derives the rest.
"""

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np

from efficientps.evaluation import write_panoptic_png

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    """A datasets/*.py preparation script as a module (datasets/ is not a package)."""
    path = REPO / "datasets" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"datasets_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rgb_ids(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_panoptic_png(str(path), ids)


def random_image(path, height, width, seed):
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), image)


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# Cityscapes polygons, drawn in order (later objects on top). "persongroup" is a crowd region.
CITYSCAPES_SCENES = [
    [
        ("sky", _rect(0, 0, 95, 20)),
        ("building", _rect(0, 20, 95, 40)),
        ("road", _rect(0, 40, 95, 63)),
        ("car", _rect(10, 35, 40, 55)),
        ("car", _rect(50, 38, 80, 60)),
        ("person", _rect(42, 25, 48, 50)),
        ("ego vehicle", _rect(0, 58, 95, 63)),
    ],
    [
        ("sky", _rect(0, 0, 95, 30)),
        ("road", _rect(0, 30, 95, 63)),
        ("persongroup", _rect(20, 20, 40, 45)),
        ("bus", _rect(55, 15, 90, 50)),
    ],
]
CITYSCAPES_SIZE = (64, 96)
# Segments that createPanopticImgs should make per scene: (things, crowd, stuff)
CITYSCAPES_EXPECTED = [(3, 0, 3), (1, 1, 2)]


def make_cityscapes_tree(root, split="val", city="testcity"):
    """leftImg8bit + gtFine polygons/instanceIds/labelIds, as in the official zips."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    height, width = CITYSCAPES_SIZE
    names = []
    for k, scene in enumerate(CITYSCAPES_SCENES):
        name = f"{city}_{k:06d}_000019"
        gt_dir = Path(root) / "gtFine" / split / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        polygons = {
            "imgHeight": height,
            "imgWidth": width,
            "objects": [{"label": label, "polygon": poly} for label, poly in scene],
        }
        polygon_path = gt_dir / f"{name}_gtFine_polygons.json"
        polygon_path.write_text(json.dumps(polygons))
        # json2instanceImg's own save() fails on current Pillow (mode "I" PNG); the official
        # files are 16-bit PNGs, so its drawing is saved as 16 bit here.
        annotation = Annotation()
        annotation.fromJsonFile(str(polygon_path))
        instance_ids = np.asarray(createInstanceImage(annotation, "ids"), np.uint16)
        cv2.imwrite(str(gt_dir / f"{name}_gtFine_instanceIds.png"), instance_ids)
        json2labelImg(str(polygon_path), str(gt_dir / f"{name}_gtFine_labelIds.png"), "ids")
        random_image(
            Path(root) / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", height, width, k
        )
        names.append(name)
    return names


def make_kitti_tree(root, split_folder="validation", count=2, size=(40, 64)):
    """The authors' release: images/*.png + annotations/*.png (RGB ids over label ids)."""
    height, width = size
    expected = []
    for k in range(count):
        ids = np.zeros((height, width), np.int64)
        ids[: height // 2] = 23  # sky
        ids[height // 2 :] = 7  # road
        ids[height // 2 :, :8] = 1  # ego vehicle: not evaluated -> void
        ids[10:30, 10:25] = 26000  # car instance 0
        ids[12:32, 30:45] = 26001 + k  # car instance 1
        ids[5:15, 50:60] = 26  # car crowd region (thing label id below 1000)
        if k == 1:
            ids[25:38, 48:52] = 24000  # a person
        name = f"{k:06d}"
        write_rgb_ids(Path(root) / split_folder / "annotations" / f"{name}.png", ids)
        random_image(Path(root) / split_folder / "images" / f"{name}.png", height, width, k)
        expected.append({"things": 2 + (k == 1), "crowd": 1, "stuff": 2})
    return expected


VISTAS_LABELS = [
    {"name": "construction--flat--road", "readable": "Road", "color": [128, 64, 128],
     "instances": False, "evaluate": True},
    {"name": "nature--sky", "readable": "Sky", "color": [70, 130, 180],
     "instances": False, "evaluate": True},
    {"name": "human--person", "readable": "Person", "color": [220, 20, 60],
     "instances": True, "evaluate": True},
    {"name": "object--vehicle--car", "readable": "Car", "color": [0, 0, 142],
     "instances": True, "evaluate": True},
]  # fmt: skip


def make_vistas_tree(root, split_folder="validation", version="v1.2", count=2, size=(48, 64)):
    """config_{version}.json + images/*.jpg + panoptic/*.png + panoptic/panoptic_2018.json."""
    height, width = size
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / f"config_{version}.json").write_text(json.dumps({"labels": VISTAS_LABELS}))
    categories = [
        {"id": i + 1, "name": label["readable"], "supercategory": label["name"],
         "isthing": int(label["instances"]), "color": label["color"]}
        for i, label in enumerate(VISTAS_LABELS)
    ]  # fmt: skip
    images, annotations = [], []
    for k in range(count):
        name = f"vistas{k:03d}"
        ids = np.zeros((height, width), np.int64)
        ids[: height // 2] = 500  # sky segment (Vistas ids are arbitrary)
        ids[height // 2 :] = 700  # road
        ids[20:40, 5:15] = 1234  # person
        ids[25:45, 30:60] = 98765  # car
        write_rgb_ids(Path(root) / split_folder / "panoptic" / f"{name}.png", ids)
        random_image(Path(root) / split_folder / "images" / f"{name}.jpg", height, width, k)
        segments = [
            {"id": 500, "category_id": 2, "iscrowd": 0},
            {"id": 700, "category_id": 1, "iscrowd": 0},
            {"id": 1234, "category_id": 3, "iscrowd": 0},
            {"id": 98765, "category_id": 4, "iscrowd": 0},
        ]
        images.append({"id": name, "file_name": f"{name}.jpg", "height": height, "width": width})
        annotations.append(
            {"image_id": name, "file_name": f"{name}.png", "segments_info": segments}
        )
    panoptic_json = Path(root) / split_folder / "panoptic" / "panoptic_2018.json"
    panoptic_json.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return panoptic_json
