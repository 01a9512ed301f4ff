#!/usr/bin/env python
"""PQ evaluation speed: efficientps' evaluator vs cityscapesscripts' pq_compute, same files.

    python benchmarks/pq_eval.py [--images 50] [--size 1024x2048] [--cache DIR]

Generates --images synthetic ground-truth scenes at --size and an imperfect prediction for each
(shifted by a few pixels, some segments relabelled, dropped or split, one invented object), in
COCO-panoptic format (cached in --cache), twice: PNGs written by OpenCV (as efficientps' demo
writes them) and by Pillow (as cityscapesscripts' createPanopticImgs and detectron2's panoptic
evaluator write them; Pillow picks other PNG row filters, which decode at other speeds).
Then, on the same folders, in this one process: our offline evaluator
(efficientps_pq.__main__.evaluate_folders: 2 threads decode PNGs while a third counts, all
without the GIL), cityscapesscripts' pq_compute_single_core + average_pq (single core), and
hotcoco's PanopticEval (Rust, its own threads) when installed. Prints the results, the max abs
difference from cityscapesscripts and the speed ratios (median of --runs, after a warm-up run
that also loads the compiled loops).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import machine_line, median_seconds, print_table
from PIL import Image
from tqdm import tqdm

from efficientps.data import synthetic
from efficientps_pq import PQAccumulator, read_panoptic_png, write_panoptic_png
from efficientps_pq.__main__ import evaluate_folders
from efficientps_pq.panoptic_ids import id_to_rgb


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


def pillow_copy(cache, gt_json, pred_json):
    """The same files re-encoded by Pillow (default settings, as cityscapesscripts saves)."""
    target = cache + "_pillow"
    done = os.path.join(target, "done")
    if not os.path.isfile(done):
        for folder in ("gtFine/cityscapes_panoptic_val", "pred"):
            os.makedirs(os.path.join(target, folder), exist_ok=True)
            for file_name in tqdm(os.listdir(os.path.join(cache, folder)), desc=f"pillow {folder}"):
                ids = read_panoptic_png(os.path.join(cache, folder, file_name))
                Image.fromarray(id_to_rgb(ids)).save(os.path.join(target, folder, file_name))
        shutil.copy(gt_json, os.path.join(target, "gtFine"))
        shutil.copy(pred_json, target)
        open(done, "w").close()
    return target


@contextlib.contextmanager
def silenced_stdout():
    """cityscapesscripts and hotcoco (from Rust) print their tables: keep them out of ours."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def hotcoco_jsons(folder, gt_json, pred_json):
    """The jsons with integer image ids, which hotcoco wants (Cityscapes' are strings)."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = json.load(f)
    number = {image["id"]: i for i, image in enumerate(gt["images"])}

    def renumbered(annotations):
        return [dict(a, image_id=number[a["image_id"]]) for a in annotations]

    gt = dict(
        gt,
        images=[dict(image, id=number[image["id"]]) for image in gt["images"]],
        annotations=renumbered(gt["annotations"]),
    )
    pred = dict(
        images=gt["images"],
        categories=gt["categories"],
        annotations=renumbered(pred["annotations"]),
    )
    paths = os.path.join(folder, "hotcoco_gt.json"), os.path.join(folder, "hotcoco_pred.json")
    for path, content in zip(paths, (gt, pred)):
        with open(path, "w") as f:
            json.dump(content, f)
    return paths


def hotcoco_pq(gt_json, gt_dir, pred_json, pred_dir):
    from hotcoco import panoptic

    def run():
        evaluation = panoptic.PanopticEval(
            gt_json, pred_json, gt_folder=gt_dir, pred_folder=pred_dir
        )
        evaluation.run()
        return evaluation.results()

    return run


def command_seconds(command, runs):
    """Median wall time of a whole command: process start, imports, evaluation."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stage_times(gt_json, gt_dir, pred_json, pred_dir):
    """Single-threaded ms per PNG read and per PQAccumulator.add (medians over the images)."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        predictions = {a["image_id"]: a for a in json.load(f)["annotations"]}
    accumulator = PQAccumulator(gt["categories"])
    reads, adds = [], []
    for annotation in gt["annotations"]:
        prediction = predictions[annotation["image_id"]]
        maps = []
        for path in (
            os.path.join(gt_dir, annotation["file_name"]),
            os.path.join(pred_dir, prediction["file_name"]),
        ):
            start = time.perf_counter()
            maps.append(read_panoptic_png(path))
            reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        accumulator.add(maps[0], annotation["segments_info"], maps[1], prediction["segments_info"])
        adds.append(time.perf_counter() - start)
    return 1000 * statistics.median(reads), 1000 * statistics.median(adds)


def import_seconds(command):
    """Seconds of imports of ``command`` (a python -m ... line), from -X importtime."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True
    )
    total = 0
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # top level
                total += int(cumulative)
    return total / 1e6


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
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "efficientps_pq_bench")
    )
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    cache = os.path.join(args.cache, f"{args.images}_{height}x{width}")
    gt_json, pred_json = prepare(cache, args.images, (height, width))
    print(f"PQ evaluation benchmark, {args.images} images at {args.size}, on: {machine_line()}")
    for writer, folder in (("OpenCV", cache), ("Pillow", pillow_copy(cache, gt_json, pred_json))):
        compare(writer, folder, args)


def compare(writer, folder, args):
    """Print the accuracy/speed table, the whole-command table and where our time goes."""
    paths = {
        "gt_json": os.path.join(folder, "gtFine", "cityscapes_panoptic_val.json"),
        "gt_dir": os.path.join(folder, "gtFine", "cityscapes_panoptic_val"),
        "pred_json": os.path.join(folder, "pred.json"),
        "pred_dir": os.path.join(folder, "pred"),
    }
    evaluators, commands = _contenders(folder, **paths)
    seconds, results = {}, {}
    for name, run in evaluators.items():
        with silenced_stdout():
            seconds[name], _ = median_seconds(run, runs=args.runs)
            results[name] = run()
    print_table(
        f"PQ on {args.images} images at {args.size}, PNGs written by {writer}, "
        f"median of {args.runs}",
        ("evaluator", "PQ", "PQ_th", "PQ_st", "max diff", "seconds", "speed-up", "x ours"),
        _accuracy_rows(results, seconds),
    )
    whole = {name: command_seconds(command, args.runs) for name, command in commands.items()}
    ours = whole["python -m efficientps_pq"]
    print_table(
        f"The whole command (process start, imports, evaluation), median of {args.runs}",
        ("command", "seconds", "x ours"),
        [(name, f"{t:.2f}", f"{t / ours:.2f}") for name, t in whole.items()],
    )
    read_ms, add_ms = stage_times(**paths)
    imports = import_seconds(commands["python -m efficientps_pq"][:3] + ["--help"])
    print_table(
        "Where our time goes (one thread, medians over the images; the rest of the whole "
        "command is Python's start, numba loading its compiled loops and the threads)",
        ("stage", "time"),
        [
            ("read_panoptic_png, per PNG", f"{read_ms:.1f} ms"),
            ("PQAccumulator.add (pair counting + matching), per image", f"{add_ms:.1f} ms"),
            ("imports of python -m efficientps_pq", f"{imports:.2f} s"),
            (
                "whole command - imports - evaluation",
                f"{ours - imports - seconds['efficientps']:.2f} s",
            ),
        ],
    )


def _contenders(folder, gt_json, gt_dir, pred_json, pred_dir):
    """In-process evaluators {name: () -> results} and whole commands {name: argv}."""
    evaluators = {
        "cityscapesscripts (1 core)": lambda: cityscapesscripts_pq(
            gt_json, gt_dir, pred_json, pred_dir
        ),
        "efficientps": lambda: evaluate_folders(
            gt_json, gt_dir, pred_json, pred_dir, progress=False
        )[0],
    }
    commands = {
        "python -m efficientps_pq": [
            sys.executable, "-m", "efficientps_pq", "--gt-json", gt_json,
            "--gt-dir", gt_dir, "--pred-json", pred_json, "--pred-dir", pred_dir,
        ],
    }  # fmt: skip
    if importlib.util.find_spec("hotcoco") is None:
        print("hotcoco is not installed (pip install hotcoco): no hotcoco rows")
    else:
        hotcoco_gt, hotcoco_pred = hotcoco_jsons(folder, gt_json, pred_json)
        evaluators["hotcoco (Rust)"] = hotcoco_pq(hotcoco_gt, gt_dir, hotcoco_pred, pred_dir)
        commands["hotcoco.panoptic.pq_compute"] = [
            sys.executable, "-c",
            "import sys; from hotcoco.panoptic import pq_compute; pq_compute(*sys.argv[1:])",
            hotcoco_gt, hotcoco_pred, gt_dir, pred_dir,
        ]  # fmt: skip
    return evaluators, commands


def _accuracy_rows(results, seconds):
    """One row per evaluator: PQ values, largest difference from cityscapesscripts, speed."""
    reference = "cityscapesscripts (1 core)"
    theirs = results[reference]
    rows = []
    for name, r in results.items():
        differences = [
            abs(r[group][metric] - theirs[group][metric])
            for group in ("All", "Things", "Stuff")
            for metric in ("pq", "sq", "rq")
        ] + [
            abs(r["per_class"][c][m] - theirs["per_class"][c][m])
            for c in theirs["per_class"]
            for m in ("pq", "sq", "rq")
        ]
        rows.append(
            (
                name,
                f"{100 * r['All']['pq']:.4f}",
                f"{100 * r['Things']['pq']:.4f}",
                f"{100 * r['Stuff']['pq']:.4f}",
                f"{max(differences):.1e}",
                f"{seconds[name]:.2f}",
                f"{seconds[reference] / seconds[name]:.1f}",
                f"{seconds[name] / seconds['efficientps']:.2f}",
            )
        )
    return rows


if __name__ == "__main__":
    main()
