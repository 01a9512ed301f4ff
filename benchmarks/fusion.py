#!/usr/bin/env python
"""The panoptic fusion's time at 1024x2048 with many detections, per pixel rule.

    python benchmarks/fusion.py [--size 1024x2048] [--detections 50] [--runs 5]

19 semantic channels (11 stuff, 8 things), ``--detections`` random boxes of 30-330 px with
28x28 mask logits, all above the score threshold: the fusion module's work at inference
(lazy paste, overlap filter, fused logits, assembly). Median of --runs after a warm-up.
"""

import argparse

import torch
from common import machine_line, median_seconds, print_table

from efficientps.modeling.meta_arch.mask_paste import BoxMaskLogits
from efficientps.modeling.meta_arch.panoptic_fusion import fuse_panoptic


def inputs(height, width, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor(
        [width - 330.0, height - 330.0]
    )
    boxes = torch.cat([corner, corner + 30 + 300 * torch.rand(count, 2, generator=generator)], 1)
    masks = torch.randn(count, 28, 28, generator=generator)
    scores = 0.5 + 0.5 * torch.rand(count, generator=generator)
    classes = torch.randint(0, 8, (count,), generator=generator)
    sem = torch.randn(19, height, width, generator=generator)
    return sem, masks, boxes, classes, scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x2048")
    parser.add_argument("--detections", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    print(f"Fusion benchmark on: {machine_line()}")
    sem, masks, boxes, classes, scores = inputs(height, width, args.detections)
    rows = []
    for rule in ("argmax", "owner", "authors"):

        def fuse(rule=rule):
            source = BoxMaskLogits(masks, boxes, height, width)
            return fuse_panoptic(
                sem, source, boxes, classes, scores, stuff_channels=list(range(11)),
                thing_channels=list(range(11, 19)), pixel_rule=rule,
            )  # fmt: skip

        seconds, times = median_seconds(fuse, runs=args.runs)
        segments = fuse()[1]
        rows.append((rule, f"{seconds:.3f}", f"{min(times):.3f}-{max(times):.3f}", len(segments)))
    print_table(
        f"Fusion at {args.size}, {args.detections} detections, median of {args.runs}",
        ("pixel rule", "s", "range", "segments"),
        rows,
    )


if __name__ == "__main__":
    main()
