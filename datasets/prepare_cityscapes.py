#!/usr/bin/env python
"""Derived Cityscapes files for panoptic training, made by cityscapesscripts itself.

    python datasets/prepare_cityscapes.py [--root $DETECTRON2_DATASETS/cityscapes]

- gtFine/<split>/<city>/*_gtFine_labelTrainIds.png from the polygons (what cityscapesscripts'
  createTrainIdLabelImgs does, file by file, with a progress bar; existing files are kept),
- gtFine/cityscapes_panoptic_<split>/ + .json from *_instanceIds.png (createPanopticImgs'
  convert2panoptic; a split whose json already lists every image is skipped).
Safe to run again after an interruption: finished work is not redone.
"""

import argparse
import glob
import json
import os
import sys

from tqdm import tqdm

SPLITS = ("train", "val")


def default_root():
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "cityscapes")


def make_train_id_labels(root, splits=SPLITS):
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    polygons = []
    for split in splits:
        polygons += sorted(glob.glob(os.path.join(root, "gtFine", split, "*", "*_polygons.json")))
    todo = [p for p in polygons if not os.path.isfile(_train_id_path(p))]
    for path in tqdm(todo, desc="labelTrainIds", unit="img"):
        target = _train_id_path(path)
        json2labelImg(path, target + ".tmp.png", "trainIds")
        os.replace(target + ".tmp.png", target)  # a killed run leaves no truncated PNG behind
    return len(polygons), len(todo)


def _train_id_path(polygons_path):
    return polygons_path.replace("_polygons.json", "_labelTrainIds.png")


def make_panoptic(root, splits=SPLITS):
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    gt_root = os.path.join(root, "gtFine")
    made = []
    for split in splits:
        instance_pngs = glob.glob(os.path.join(gt_root, split, "*", "*_instanceIds.png"))
        if not instance_pngs:
            continue
        json_path = os.path.join(gt_root, f"cityscapes_panoptic_{split}.json")
        if _complete(json_path, gt_root, split, len(instance_pngs)):
            print(f"panoptic {split}: {json_path} is complete, skipped")
            continue
        convert2panoptic(cityscapesPath=gt_root, outputFolder=gt_root, setNames=[split])
        made.append(split)
    return made


def _complete(json_path, gt_root, split, expected):
    if not os.path.isfile(json_path):
        return False
    try:
        with open(json_path) as f:
            annotations = json.load(f)["annotations"]
    except (ValueError, KeyError):
        return False  # truncated by an interruption: make it again
    folder = os.path.join(gt_root, f"cityscapes_panoptic_{split}")
    return len(annotations) == expected and all(
        os.path.isfile(os.path.join(folder, a["file_name"])) for a in annotations
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="the Cityscapes folder")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.root, "gtFine")):
        sys.exit(
            f"{args.root}/gtFine not found: expected Cityscapes' gtFine_trainvaltest and "
            "leftImg8bit_trainvaltest unpacked there (see datasets/README.md)"
        )
    total, converted = make_train_id_labels(args.root, args.splits)
    print(f"labelTrainIds: {converted} made, {total - converted} already there")
    make_panoptic(args.root, args.splits)
    print(f"Cityscapes ready under {args.root}")


if __name__ == "__main__":
    main()
