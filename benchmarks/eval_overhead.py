#!/usr/bin/env python
"""What the in-loop evaluator adds to an evaluation run, over inference alone.

    python benchmarks/eval_overhead.py [--images 50] [--sizes 128x256 512x1024 1024x2048]

For each size: synthetic val scenes (cached), the demo architecture (configs/demo, EfficientPS-B0)
with random weights and its instance head forced to 20 detections per image (score threshold 0:
a trained model finds objects, a random one would find none, and AP's work grows with them).
Then, image by image, as train_net.py's evaluation loop does: the model's forward (mapper and
data loading excluded) and EfficientPSEvaluator.process (ground-truth PNG read, PQ, mIoU and
AP bookkeeping), and at the end evaluate() (COCO AP, the summaries). The 5% target compares
process() + evaluate() with the forward passes.
"""

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch
from common import REPO, machine_line, print_table
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model

from efficientps import add_efficientps_config
from efficientps.data import EfficientPSPanopticMapper, synthetic
from efficientps.data.datasets.builtin import register_synthetic_panoptic
from efficientps.evaluation import EfficientPSEvaluator

DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "efficientps_synthetic_cpu.yaml")
DETECTIONS = 20


def dataset(cache, images, size):
    root = os.path.join(cache, f"{images}_{size[0]}x{size[1]}")
    json_path = os.path.join(root, "gtFine", "cityscapes_panoptic_val.json")
    if not os.path.isfile(json_path):
        synthetic.generate_split(root, "val", images, seed=5, size=size)
    name = f"eval_overhead_{images}_{size[0]}x{size[1]}"
    if name not in DatasetCatalog.list():
        register_synthetic_panoptic(name, root, "val")
    return name


def measure(name, size):
    height, width = size
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(DEMO_CONFIG)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "DATASETS.TRAIN", f"('{name}',)",
            "DATASETS.TEST", f"('{name}',)",
            "MODEL.WEIGHTS", "",
            "INPUT.MIN_SIZE_TEST", str(height),
            "INPUT.MAX_SIZE_TEST", str(width),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS),
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    loader = build_detection_test_loader(
        cfg, name, mapper=EfficientPSPanopticMapper(cfg, is_train=False)
    )
    evaluator = EfficientPSEvaluator(name, distributed=False)
    evaluator.reset()
    forward = process = 0.0
    with torch.no_grad():
        for index, inputs in enumerate(loader):
            start = time.perf_counter()
            outputs = model(inputs)
            middle = time.perf_counter()
            evaluator.process(inputs, outputs)
            end = time.perf_counter()
            if index:  # the first image warms up both
                forward += middle - start
                process += end - middle
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' summary lines
        evaluator.evaluate()
    final = time.perf_counter() - start
    return forward, process, final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--sizes", nargs="+", default=["128x256", "512x1024", "1024x2048"])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "efficientps_eval_overhead")
    )
    args = parser.parse_args(argv)
    print(f"In-loop evaluation overhead, {args.images} images, on: {machine_line()}")
    rows = []
    for text in args.sizes:
        size = tuple(int(x) for x in text.split("x"))
        name = dataset(args.cache, args.images, size)
        forward, process, final = measure(name, size)
        n = len(DatasetCatalog.get(name)) - 1
        rows.append(
            (
                text,
                f"{1000 * forward / n:.1f}",
                f"{1000 * process / n:.1f}",
                f"{final:.2f}",
                f"{100 * process / forward:.1f}%",
                f"{100 * (process + final) / forward:.1f}%",
            )
        )
    print_table(
        f"EfficientPSEvaluator over inference, {args.images} images (first one excluded), "
        f"demo architecture, random weights, {DETECTIONS} detections per image",
        ("size", "forward ms/img", "process ms/img", "evaluate() s", "process / forward",
         "all / forward"),
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
