#!/usr/bin/env python
"""KITTI panoptic (the EfficientPS authors' release) -> COCO-panoptic PNGs + json per split.

    python datasets/prepare_kitti_panoptic.py [--root $DETECTRON2_DATASETS/kitti_panoptic]

The release's annotations/*.png hold id = R + 256 G + 256^2 B over Cityscapes label ids: id < 1000
is a stuff class (or a crowd region of a thing class), id >= 1000 an instance of class id // 1000.
Written here, like cityscapesscripts' createPanopticImgs does for Cityscapes: {split}/panoptic/*.png
(segment id = the release's id, 0 = void: classes Cityscapes does not evaluate) and
{split}_panoptic.json (category ids = Cityscapes label ids). PNGs already written are kept, so an
interrupted run resumes; the json is written last, atomically.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

SPLITS = {"train": "training", "val": "validation"}
LABEL_DIVISOR = 1000


def default_root():
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "kitti_panoptic")


def read_ids(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path}: expected an RGB id PNG (id = R + 256 G + 256^2 B)")
    bgr = bgr.astype(np.int64)
    return bgr[..., 2] + 256 * bgr[..., 1] + 65536 * bgr[..., 0]


def write_ids(path, ids):
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    tmp = path + ".tmp.png"
    if not cv2.imwrite(tmp, rgb[..., ::-1]):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def evaluated_labels():
    """Cityscapes label id -> (is thing) for the 19 evaluated classes."""
    from cityscapesscripts.helpers.labels import labels

    return {label.id: bool(label.hasInstances) for label in labels if not label.ignoreInEval}


def convert_ids(ids, evaluated, source):
    """Release ids -> panoptic ids (void 0) and segments_info."""
    unique, inverse = np.unique(ids, return_inverse=True)
    out = np.zeros(len(unique), np.int64)
    segments = []
    for k, value in enumerate(unique.tolist()):
        label = value // LABEL_DIVISOR if value >= LABEL_DIVISOR else value
        if label not in evaluated:
            continue  # void, unlabeled or a class Cityscapes does not evaluate
        is_instance = value >= LABEL_DIVISOR
        if is_instance and not evaluated[label]:
            raise ValueError(
                f"{source}: id {value} is an instance of stuff class {label}; expected instance "
                f"ids only for thing classes"
            )
        out[k] = value
        segments.append(
            {
                "id": value,
                "category_id": label,
                "iscrowd": int(evaluated[label] and not is_instance),
            }
        )
    panoptic = out[inverse.reshape(ids.shape)]
    for segment in segments:
        mask = panoptic == segment["id"]
        ys, xs = np.nonzero(mask)
        segment["area"] = int(mask.sum())
        segment["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return panoptic, segments


def prepare_split(root, split, evaluated):
    folder = os.path.join(root, SPLITS[split])
    image_dir = os.path.join(folder, "images")
    annotation_dir = os.path.join(folder, "annotations")
    out_dir = os.path.join(folder, "panoptic")
    if not os.path.isdir(annotation_dir):
        return None
    os.makedirs(out_dir, exist_ok=True)
    images, annotations = [], []
    names = sorted(f for f in os.listdir(annotation_dir) if f.endswith(".png"))
    for name in tqdm(names, desc=f"kitti {split}", unit="img"):
        stem = os.path.splitext(name)[0]
        image_name = _find_image(image_dir, stem)
        target = os.path.join(out_dir, name)
        if os.path.isfile(target):  # done by an earlier run: read the result back
            panoptic, segments = convert_ids(read_ids(target), evaluated, target)
        else:
            panoptic, segments = convert_ids(
                read_ids(os.path.join(annotation_dir, name)), evaluated, name
            )
            write_ids(target, panoptic)
        height, width = panoptic.shape
        images.append({"id": stem, "file_name": image_name, "height": height, "width": width})
        annotations.append({"image_id": stem, "file_name": name, "segments_info": segments})
    categories = _categories()
    json_path = os.path.join(root, f"{SPLITS[split]}_panoptic.json")
    with open(json_path + ".tmp", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(json_path + ".tmp", json_path)
    return json_path, len(names)


def _find_image(image_dir, stem):
    for extension in (".png", ".jpg", ".jpeg"):
        if os.path.isfile(os.path.join(image_dir, stem + extension)):
            return stem + extension
    raise FileNotFoundError(f"no image {stem}.png/.jpg in {image_dir} for annotation {stem}.png")


def _categories():
    from efficientps.data.datasets.cityscapes import cityscapes_categories

    return cityscapes_categories()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="the kitti_panoptic folder")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    args = parser.parse_args(argv)
    evaluated = evaluated_labels()
    done = [prepare_split(args.root, split, evaluated) for split in args.splits]
    if not any(done):
        sys.exit(
            f"no {{training,validation}}/annotations/*.png under {args.root}: expected the "
            "KITTI panoptic release unpacked there (see datasets/README.md)"
        )
    for result in filter(None, done):
        print(f"wrote {result[0]} ({result[1]} images)")


if __name__ == "__main__":
    main()
