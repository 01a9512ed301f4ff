#!/usr/bin/env python
"""Parameters and fvcore FLOPs of the Cityscapes EfficientPS-b5 model at 1024x2048.

    python benchmarks/model_flops.py [--size 1024x2048]

Counted with detectron2's FlopCountAnalysis (fvcore; one multiply-add = one FLOP, as the paper's
tables count), random weights, inference. The instance branch's cost depends on how many boxes
reach the ROI heads, so the count is given twice: with the paper's thresholds on random weights
(almost no detections: the dense part of the network) and with 100 detections forced.
"""

import argparse

import torch
from common import build, count_parameters, efficientps_cfg, machine_line, print_table
from detectron2.utils.analysis import FlopCountAnalysis

PAPER = {"params": 40.89e6, "flops": 433.94e9}


def gflops(model, height, width):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    analysis = FlopCountAnalysis(model, [{"image": image, "height": height, "width": width}])
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    return analysis.total(), {
        k: by_module.get(k, 0)
        for k in ("backbone", "sem_seg_head", "proposal_generator", "roi_heads")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x2048")
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    print(f"EfficientPS-b5 (Cityscapes config) at {height}x{width} on: {machine_line()}")
    rows = []
    for label, opts in (
        ("paper thresholds", []),
        ("100 detections", ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                            "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.0"]),
    ):  # fmt: skip
        model = build(efficientps_cfg(opts=opts))
        with torch.no_grad():
            total, parts = gflops(model, height, width)
        rows.append(
            (label, f"{count_parameters(model) / 1e6:.2f} M", f"{total / 1e9:.1f}",
             *(f"{parts[k] / 1e9:.1f}" for k in parts))
        )  # fmt: skip
    rows.append(("paper (Table 1)", "40.89 M", "433.94", "", "", "", ""))
    print_table(
        f"Parameters and GFLOPs at {height}x{width}",
        ("count", "params", "GFLOPs", "backbone+FPN", "semantic head", "RPN", "ROI heads"),
        rows,
    )


if __name__ == "__main__":
    main()
