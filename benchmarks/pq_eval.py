#!/usr/bin/env python
"""PQ evaluation speed: efficientps' evaluator vs cityscapesscripts' pq_compute, same files.

    python benchmarks/pq_eval.py [--images 50] [--size 1024x2048] [--cache DIR]

Generates --images synthetic ground-truth scenes at --size and an imperfect prediction for each
(shifted by a few pixels, some segments relabelled, dropped or split, one invented object), in
COCO-panoptic format (cached in --cache). Then, each in a single process, our offline evaluator
(efficientps.evaluation.evaluate_folders, which decodes PNGs in 2 threads while it computes) and
cityscapesscripts' pq_compute_single_core + average_pq run on the same folders; prints both
results, the max abs difference and the speed ratio (median of --runs).
"""

import argparse
import json
import os
import tempfile

import numpy as np
from common import machine_line, median_seconds, print_table
from tqdm import tqdm

from efficientps.data import synthetic
from efficientps.evaluation import read_panoptic_png, write_panoptic_png
from efficientps.evaluation.__main__ import evaluate_folders


def make_prediction(ids, segments, rng):
    pred = np.roll(ids, int(rng.integers(2, 6)), axis=1)
    kept = []
    next_id = int(ids.max()) + 1
    for s in segments:
        draw = rng.random()
        if draw < 0.1:
            pred[pred == s["id"]] = 0
            continue
        category = s["category_id"] if draw > 0.2 else int(rng.choice([24, 26, 28, 7, 8]))
        if draw > 0.9:
            ys, xs = np.nonzero(pred == s["id"])
            if len(xs) > 50:
                right = (pred == s["id"]) & (np.arange(ids.shape[1]) > np.median(xs))[None, :]
                pred[right] = next_id
                kept.append({"id": next_id, "category_id": category, "iscrowd": 0})
                next_id += 1
        kept.append({"id": s["id"], "category_id": category, "iscrowd": 0})
    h, w = ids.shape
    y, x = int(rng.integers(0, h - h // 8)), int(rng.integers(0, w - w // 8))
    pred[y : y + h // 10, x : x + w // 20] = next_id
    kept.append({"id": next_id, "category_id": 24, "iscrowd": 0})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in kept if s["id"] in present]


def prepare(cache, images, size):
    gt_json = os.path.join(cache, "gtFine", "cityscapes_panoptic_val.json")
    pred_json = os.path.join(cache, "pred.json")
    if os.path.isfile(pred_json):
        with open(pred_json) as f:
            if len(json.load(f)["annotations"]) == images:
                return gt_json, pred_json
    synthetic.generate_split(cache, "val", images, seed=11, size=size)
    gt_dir = os.path.join(cache, "gtFine", "cityscapes_panoptic_val")
    pred_dir = os.path.join(cache, "pred")
    os.makedirs(pred_dir, exist_ok=True)
    with open(gt_json) as f:
        gt = json.load(f)
    rng = np.random.default_rng(0)
    annotations = []
    for annotation in tqdm(gt["annotations"], desc="predictions"):
        ids = read_panoptic_png(os.path.join(gt_dir, annotation["file_name"]))
        pred, segments = make_prediction(ids, annotation["segments_info"], rng)
        write_panoptic_png(os.path.join(pred_dir, annotation["file_name"]), pred)
        annotations.append(dict(annotation, segments_info=segments))
    with open(pred_json, "w") as f:
        json.dump({"annotations": annotations}, f)
    return gt_json, pred_json


def cityscapesscripts_pq(gt_json, gt_dir, pred_json, pred_dir):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import (
        average_pq,
        pq_compute_single_core,
    )

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        predictions = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, predictions[a["image_id"]]) for a in gt["annotations"]]
    stat = pq_compute_single_core(0, pairs, gt_dir, pred_dir, categories)
    return average_pq(stat, categories)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", default="1024x2048")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "efficientps_pq_bench")
    )
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    cache = os.path.join(args.cache, f"{args.images}_{height}x{width}")
    gt_json, pred_json = prepare(cache, args.images, (height, width))
    gt_dir = os.path.join(cache, "gtFine", "cityscapes_panoptic_val")
    pred_dir = os.path.join(cache, "pred")
    print(f"PQ evaluation benchmark, {args.images} images at {args.size}, on: {machine_line()}")

    ours_time, _ = median_seconds(
        lambda: evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, progress=False),
        runs=args.runs,
    )
    theirs_time, _ = median_seconds(
        lambda: cityscapesscripts_pq(gt_json, gt_dir, pred_json, pred_dir), runs=args.runs
    )
    ours, _ = evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, progress=False)
    theirs = cityscapesscripts_pq(gt_json, gt_dir, pred_json, pred_dir)
    differences = [
        abs(ours[group][metric] - theirs[group][metric])
        for group in ("All", "Things", "Stuff")
        for metric in ("pq", "sq", "rq")
    ] + [
        abs(ours["per_class"][c][m] - theirs["per_class"][c][m])
        for c in theirs["per_class"]
        for m in ("pq", "sq", "rq")
    ]
    rows = [
        (name, f"{100 * r['All']['pq']:.4f}", f"{100 * r['Things']['pq']:.4f}",
         f"{100 * r['Stuff']['pq']:.4f}", f"{t:.2f}", f"{theirs_time / t:.1f}")
        for name, r, t in (("cityscapesscripts (1 process)", theirs, theirs_time),
                           ("efficientps (1 process)", ours, ours_time))
    ]  # fmt: skip
    print_table(
        f"PQ on {args.images} images at {args.size}, median of {args.runs}",
        ("evaluator", "PQ", "PQ_th", "PQ_st", "seconds", "speed-up"),
        rows,
    )
    print(
        f"\nmax |difference| over All/Things/Stuff and per-class PQ/SQ/RQ: {max(differences):.1e}"
    )


if __name__ == "__main__":
    main()
