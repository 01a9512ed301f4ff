#!/usr/bin/env python
"""Where the panoptic fusion loses PQ: the paper's fusion re-run with oracle choices.

    python benchmarks/fusion_oracle.py [--run output/learning/runs/demo_config-seed1]

The learning benchmark's trained demo model (benchmarks/learning.py, trained first if the run
is missing) predicts the 30 val images once; its detections are then fused again with one
decision taken from the ground truth each row, so that each row's PQ gain over the paper row is
what a perfect version of that decision would be worth (an upper bound for a learned fusion
that learns it):

  paper            the model's own output
  oracle ranking   detections above the score threshold ordered by their true mask IoU
                   (best IoU with a ground-truth instance of their class) instead of the box
                   score: what Mask Scoring R-CNN's ideal quality head would do to the overlap
                   filter and the argmax ties
  oracle filter    detections whose mask matches no ground-truth instance of their class
                   (IoU <= 0.5) dropped: every false-positive segment removed
  oracle recall    every detection that matches (IoU > 0.5), also those under the threshold,
                   and no other
                   (the box head runs with a score threshold of 0.05 instead of 0.5 for this;
                   the paper's fusion still fuses only detections scoring >= 0.5, so the other
                   rows are what the model gives)
  oracle all       filter + ranking together

Besides PQ, PQ_th and PQ_st, each row counts the thing segments that are true positives, false
positives and missed (false negatives), summed over classes.
"""

import argparse
import os

# First: importing precision sets DETECTRON2_DATASETS before detectron2 is imported.
from precision import RUN, VAL, run_predictor, trained_run  # isort: skip

from common import machine_line, print_table  # noqa: E402

ROWS = ("paper", "oracle ranking", "oracle filter", "oracle recall", "oracle all")


def best_mask_iou(masks, classes, gt_ids, gt_segments, thing_channels):
    """Per detection, the best IoU of its pasted mask with a non-crowd ground-truth instance
    of its class (0 where there is none)."""
    import numpy as np

    best = np.zeros(len(masks))
    for index, (mask, cls) in enumerate(zip(masks, classes)):
        channel = thing_channels[int(cls)]
        for segment in gt_segments:
            if segment["category_id"] != channel or segment.get("iscrowd", 0):
                continue
            gt = gt_ids == segment["id"]
            union = np.logical_or(mask, gt).sum()
            if union:
                best[index] = max(best[index], np.logical_and(mask, gt).sum() / union)
    return best


def oracle_detections(row, detections, iou, score_thresh):
    """The detections as the oracle of ``row`` hands them to the fusion."""
    import torch

    if row == "paper":
        return detections
    detections = detections[torch.arange(len(detections))]  # a copy: rows change its scores
    scores = detections.scores
    matched = torch.as_tensor(iou > 0.5)
    confident = scores >= score_thresh
    if row in ("oracle filter", "oracle all"):
        detections = detections[confident & matched]
    elif row == "oracle recall":
        detections = detections[matched]
        detections.scores = torch.clamp(detections.scores, min=score_thresh)
        return detections
    if row in ("oracle ranking", "oracle all"):
        kept_iou = torch.as_tensor(iou, dtype=scores.dtype)
        kept_iou = kept_iou[confident & matched] if row == "oracle all" else kept_iou
        # Above the threshold, ordered by true IoU; below it, untouched (still not fused).
        ranked = score_thresh + (1 - score_thresh) * kept_iou * 0.999
        detections.scores = torch.where(detections.scores >= score_thresh, ranked,
                                        detections.scores)  # fmt: skip
    return detections


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=RUN, help="a learning-benchmark run (trained if missing)")
    args = parser.parse_args(argv)
    run_dir = trained_run(args.run)

    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog
    from tqdm import tqdm

    from efficientps_pq import PQAccumulator, read_panoptic_png

    predictor = run_predictor(run_dir, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"])
    fusion = predictor.model.panoptic_fusion
    tables = fusion.class_tables
    thing_channels = list(tables.thing_channels)
    categories = [{"id": c, "isthing": c in thing_channels} for c in range(tables.num_classes)]
    accumulators = {row: PQAccumulator(categories) for row in ROWS}
    records = DatasetCatalog.get(VAL)
    for record in tqdm(records, desc="val", unit="image"):
        with torch.no_grad():
            output = predictor(cv2.imread(record["file_name"], cv2.IMREAD_COLOR))
        gt_ids = read_panoptic_png(record["pan_seg_file_name"])
        detections = output["instances"]
        iou = best_mask_iou(detections.pred_masks.numpy(), detections.pred_classes,
                            gt_ids, record["segments_info"], thing_channels)  # fmt: skip
        for row, accumulator in accumulators.items():
            chosen = oracle_detections(row, detections, iou, fusion.params.score_thresh)
            with torch.no_grad():
                ids, segments = fusion(output["sem_seg"], chosen)
            accumulator.add(gt_ids, record["segments_info"], ids.numpy(), segments)
    table = []
    for row, accumulator in accumulators.items():
        results = accumulator.results()
        things = np.asarray([c["isthing"] for c in categories])
        table.append(
            [row] + [f"{100 * results[k]['pq']:.1f}" for k in ("All", "Things", "Stuff")]
            + [str(int(accumulator.tp[things].sum())), str(int(accumulator.fp[things].sum())),
               str(int(accumulator.fn[things].sum()))]
        )  # fmt: skip
    print_table(
        f"Fusion with oracle choices: {os.path.basename(run_dir)}, {len(records)} val images; "
        f"{machine_line()}",
        ["fusion", "PQ", "PQ_th", "PQ_st", "thing TP", "thing FP", "thing FN"],
        table,
    )


if __name__ == "__main__":
    main()
