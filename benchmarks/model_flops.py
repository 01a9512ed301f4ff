#!/usr/bin/env python
"""Parameters and fvcore FLOPs of the Cityscapes EfficientPS-b5 model at 1024x2048.

    python benchmarks/model_flops.py [--size 1024x2048]

Counted with fvcore's FlopCountAnalysis (one multiply-add = one FLOP) on a wrapper that feeds the
image tensor through the model's detectron2 interface; random weights, inference. The instance
branch's cost depends on how many boxes reach the ROI heads, so the count is given twice: with
the paper's thresholds on random weights (almost no detections) and with 100 detections forced.
Most of "ROI heads" is the box head's two FC layers on the RPN's 1000 proposals, which the
paper's count may treat differently.
"""

import argparse

import torch
from common import build, count_parameters, efficientps_cfg, machine_line, print_table
from fvcore.nn import FlopCountAnalysis
from torch import nn

PAPER = {"params": 40.89e6, "flops": 433.94e9}


class TensorInterface(nn.Module):
    """image tensor -> (panoptic ids, semantic logits), for the tracer of fvcore.

    detectron2.utils.analysis.FlopCountAnalysis would do this wrapping, but on v0.6 importing it
    imports detectron2.export, which needs caffe2 (gone from PyTorch since 1.x wheels).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        height, width = image.shape[-2:]
        output = self.model([{"image": image, "height": height, "width": width}])[0]
        return output["panoptic_seg"][0], output["sem_seg"]


def gflops(model, height, width):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    analysis = FlopCountAnalysis(TensorInterface(model), (image,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    return analysis.total(), {
        k: by_module.get(f"model.{k}", 0)
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
