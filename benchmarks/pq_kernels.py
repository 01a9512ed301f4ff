#!/usr/bin/env python
"""What the offline PQ command's own PNG reader and compiled loops buy over OpenCV/NumPy.

    python benchmarks/pq_kernels.py [--images 10] [--size 1024x2048] [--cache DIR]

On the ground truths and predictions of benchmarks/pq_eval.py (same generator and cache), one
thread, median over the images of the median of --runs calls each:
- reading a panoptic PNG into ids: ``read_panoptic_png`` (libdeflate + a numba unfilter loop)
  vs ``cv2.imread`` + ``rgb_to_id`` (NumPy);
- counting the pixels of every (gt id, pred id) pair: ``pair_counts`` (numba run finder, then
  the runs summed) vs ``np.unique`` over the combined ids (panopticapi's way);
- the semantic confusion matrix: ``add_confusion`` (numba) vs ``np.bincount`` over
  ``gt * C + pred``.
Each pair is checked to give identical results. The compiled loops stay only while they are
faster: this table says by how much.
"""

import argparse
import glob
import os
import statistics
import tempfile
import time

import cv2
import numpy as np
from common import machine_line, print_table
from pq_eval import prepare

from efficientps_pq import read_panoptic_png
from efficientps_pq.kernels import add_confusion
from efficientps_pq.panoptic_ids import rgb_to_id
from efficientps_pq.panoptic_quality import pair_counts

CLASSES = 19


def median_call_seconds(fn, inputs, runs):
    fn(*inputs)  # warm-up (and the numba loops loaded)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opencv_read(path):
    return rgb_to_id(cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1])


def numpy_pair_counts(gt, pred):
    combined = gt.astype(np.int64).ravel() * (1 << 24) + pred.astype(np.int64).ravel()
    pairs, counts = np.unique(combined, return_counts=True)
    return pairs >> 24, pairs & ((1 << 24) - 1), counts


def numpy_confusion(gt, pred, ignore=255):
    gt, pred = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    keep = gt != ignore
    return np.bincount(gt[keep] * CLASSES + pred[keep], minlength=CLASSES**2).reshape(
        CLASSES, CLASSES
    )


def compiled_confusion(gt, pred, ignore=255):
    confusion = np.zeros((CLASSES, CLASSES), np.int64)
    add_confusion(gt.ravel(), pred.ravel(), ignore, confusion)
    return confusion


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", default="1024x2048")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pq_kernels"))
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    prepare(args.cache, args.images, size)
    gt_pngs = sorted(
        glob.glob(os.path.join(args.cache, "gtFine", "cityscapes_panoptic_val", "*.png"))
    )
    pred_pngs = sorted(glob.glob(os.path.join(args.cache, "pred", "*.png")))
    assert len(gt_pngs) == len(pred_pngs) == args.images
    rng = np.random.default_rng(0)
    times = {name: [] for name in ("read", "read_cv2", "pairs", "pairs_np", "conf", "conf_np")}
    for gt_path, pred_path in zip(gt_pngs, pred_pngs):
        gt, pred = read_panoptic_png(gt_path), read_panoptic_png(pred_path)
        assert np.array_equal(gt, opencv_read(gt_path))
        ours, numpy_ = pair_counts(gt, pred), numpy_pair_counts(gt, pred)
        assert all(np.array_equal(a, b) for a, b in zip(ours, numpy_))
        # Semantic maps: the segment ids folded onto 19 classes, some pixels ignored.
        sem_gt = (gt % CLASSES).astype(np.int32)
        sem_gt[rng.random(gt.shape) < 0.1] = 255
        sem_pred = (pred % CLASSES).astype(np.int32)
        assert np.array_equal(
            compiled_confusion(sem_gt, sem_pred), numpy_confusion(sem_gt, sem_pred)
        )
        for name, fn, inputs in (
            ("read", read_panoptic_png, (gt_path,)),
            ("read_cv2", opencv_read, (gt_path,)),
            ("pairs", pair_counts, (gt, pred)),
            ("pairs_np", numpy_pair_counts, (gt, pred)),
            ("conf", compiled_confusion, (sem_gt, sem_pred)),
            ("conf_np", numpy_confusion, (sem_gt, sem_pred)),
        ):
            times[name].append(median_call_seconds(fn, inputs, args.runs))
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    rows = [
        ["read a panoptic PNG into ids", "read_panoptic_png", f"{ms['read']:.1f}",
         "cv2.imread + rgb_to_id", f"{ms['read_cv2']:.1f}", f"{ms['read_cv2'] / ms['read']:.1f}x"],
        ["pixel count per (gt, pred) pair", "pair_counts", f"{ms['pairs']:.1f}",
         "np.unique", f"{ms['pairs_np']:.1f}", f"{ms['pairs_np'] / ms['pairs']:.1f}x"],
        ["semantic confusion matrix", "add_confusion", f"{ms['conf']:.1f}",
         "np.bincount", f"{ms['conf_np']:.1f}", f"{ms['conf_np'] / ms['conf']:.1f}x"],
    ]  # fmt: skip
    print_table(
        f"PQ kernels vs OpenCV/NumPy, {len(gt_pngs)} images at {args.size}, one thread, "
        f"median ms per image (identical results); {machine_line()}",
        ["step", "ours", "ms", "OpenCV/NumPy", "ms", "ours faster by"],
        rows,
    )


if __name__ == "__main__":
    main()
