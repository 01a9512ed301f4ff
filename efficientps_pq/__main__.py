"""Offline PQ on COCO-panoptic folders, cityscapesscripts-compatible results json.

    python -m efficientps_pq --gt-json G --gt-dir GD --pred-json P --pred-dir PD \
        [--output results.json]
"""

import argparse
import itertools
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from .panoptic_png import read_panoptic_png
from .panoptic_quality import PanopticFormatError, PQAccumulator, format_table


def prefetched(items, load, workers=2, ahead=4):
    """(item, load(item)) in order, loading up to ``ahead`` items in threads (PNG decoding
    releases the GIL, so it overlaps the PQ arithmetic of the previous image)."""
    iterator = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(
            (item, pool.submit(load, item)) for item in itertools.islice(iterator, ahead)
        )
        while pending:
            item, future = pending.popleft()
            for following in itertools.islice(iterator, 1):
                pending.append((following, pool.submit(load, following)))
            yield item, future.result()


def evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, progress=True):
    """PQ of the predictions against the ground truth; returns cityscapesscripts' structure."""
    for path in (gt_json, pred_json):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such json file: {path}")
    for path in (gt_dir, pred_dir):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such folder: {path}")
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = json.load(f)
    if "categories" not in gt:
        raise PanopticFormatError(f"{gt_json}: no 'categories' (not COCO-panoptic)")
    predictions = {a["image_id"]: a for a in pred.get("annotations", [])}

    def load(annotation):
        image_id = annotation["image_id"]
        if image_id not in predictions:
            raise PanopticFormatError(f"{pred_json}: no prediction for image {image_id!r}")
        prediction = predictions[image_id]
        gt_path = os.path.join(gt_dir, annotation["file_name"])
        pred_path = os.path.join(pred_dir, prediction["file_name"])
        for path in (gt_path, pred_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image {image_id!r}: {path} not found")
        return prediction, pred_path, read_panoptic_png(gt_path), read_panoptic_png(pred_path)

    accumulator = PQAccumulator(gt["categories"])
    annotations = tqdm(gt["annotations"], desc="PQ", disable=not progress)
    # PNG decoding and pair counting release the GIL: two threads decode ahead while this one
    # counts, so both cores are busy.
    for annotation, (prediction, pred_path, gt_ids, pred_ids) in prefetched(annotations, load):
        accumulator.add(
            gt_ids,
            annotation["segments_info"],
            pred_ids,
            prediction["segments_info"],
            image_name=f"{annotation['image_id']} ({pred_path})",
        )
    return accumulator.results(), gt["categories"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt-json", required=True)
    parser.add_argument("--gt-dir", required=True)
    parser.add_argument("--pred-json", required=True)
    parser.add_argument("--pred-dir", required=True)
    parser.add_argument("--output", help="results json (cityscapesscripts' layout)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        results, categories = evaluate_folders(
            args.gt_json, args.gt_dir, args.pred_json, args.pred_dir
        )
    except (FileNotFoundError, PanopticFormatError) as e:
        sys.exit(f"error: {e}")
    print(format_table(results, categories))
    print(f"Time elapsed: {time.perf_counter() - start:0.2f} seconds")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, sort_keys=True, indent=4)
        print(f"Saved {args.output}")


if __name__ == "__main__":
    main()
    # Everything is written and closed: skip the interpreter's teardown, which takes ~0.3 s
    # here (mostly numba's LLVM), a fifth of the whole command.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
