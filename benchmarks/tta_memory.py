#!/usr/bin/env python
"""Peak memory and time of test-time augmentation on one 1024x2048 image, this code vs another.

    python benchmarks/tta_memory.py [--before DIR] [--min-sizes 768 1024 ...] [--no-flip]

EfficientPS-b5 (Cityscapes config, random weights, every detection kept up to
TEST.DETECTIONS_PER_IMAGE) under EfficientPSWithTTA, as ``train_net.py --eval-only
TEST.AUG.ENABLED True`` runs it: the paper's scales (TEST.AUG.MIN_SIZES 768..2048 of 1024) and
flips by default. Each row is a fresh process (its own peak RSS). ``--before DIR`` adds a row for
another checkout (e.g. a ``git worktree`` of the commit before a change), run with its own code.
"""

import argparse
import json
import os
import sys
import time

from common import REPO, machine_line, print_table, run_worker

PAPER_MIN_SIZES = [768, 1024, 1280, 1536, 1792, 2048]


def measure(min_sizes, flip):
    import torch
    from common import build, efficientps_cfg, peak_rss_mb

    from efficientps.modeling.meta_arch import EfficientPSWithTTA

    cfg = efficientps_cfg(
        opts=[
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.0",
            "TEST.AUG.MIN_SIZES", str(tuple(min_sizes)),
            "TEST.AUG.MAX_SIZE", "4096",
            "TEST.AUG.FLIP", str(flip),
        ]
    )  # fmt: skip
    model = build(cfg)
    tta = EfficientPSWithTTA(cfg, model)
    image = torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8)
    inputs = [{"image": image, "height": 1024, "width": 2048}]
    before = peak_rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        output = tta(inputs)[0]
    seconds = time.perf_counter() - start
    return {
        "peak_rss_mb": peak_rss_mb(),
        "model_rss_mb": before,
        "seconds": seconds,
        "segments": len(output["panoptic_seg"][1]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout to measure beside this one")
    parser.add_argument("--min-sizes", type=int, nargs="+", default=PAPER_MIN_SIZES)
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    flip = not args.no_flip
    if args.worker:
        print(json.dumps(measure(args.min_sizes, flip)))
        return
    checkouts = ([("before", os.path.abspath(args.before))] if args.before else []) + [
        ("this checkout", REPO)
    ]
    rows = []
    for name, checkout in checkouts:
        env = dict(os.environ, PYTHONPATH=checkout)
        worker_args = ["--worker", "--min-sizes", *map(str, args.min_sizes)]
        worker_args += [] if flip else ["--no-flip"]
        # This file runs in every checkout, so the worker is always this script.
        result = run_worker(os.path.abspath(__file__), worker_args, env=env)
        rows.append(
            [
                f"{name} ({os.path.basename(checkout)})",
                f"{result['peak_rss_mb'] / 1024:.2f}",
                f"{(result['peak_rss_mb'] - result['model_rss_mb']) / 1024:.2f}",
                f"{result['seconds']:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    copies = len(args.min_sizes) * (2 if flip else 1)
    print_table(
        f"TTA on one 1024x2048 image, EfficientPS-b5, {copies} copies (MIN_SIZES "
        f"{args.min_sizes}, flip {flip}); {machine_line()}",
        ["code", "peak RSS (GiB)", "TTA's own peak (GiB)", "seconds"],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
