#!/usr/bin/env python
"""Convert the authors' released EfficientPS checkpoint into a detectron2 checkpoint.

    python tools/convert_official_checkpoint.py --input model.pth \
        --output efficientps_b5_cityscapes_official.pth
    python tools/convert_official_checkpoint.py --input kitti/model.pth \
        --output efficientps_b5_kitti_official.pth \
        --config-file configs/KITTI-PanopticSegmentation/efficientps_b5_official.yaml

The input is the .pth of DeepSceneSeg/EfficientPS' release (an mmdetection v1 checkpoint; unzip
the download first). Nothing is downloaded. The output loads into the model of
``--config-file`` (default: the Cityscapes official config) with no missing and no unexpected
keys; evaluate it with that config:

    python train_net.py \
        --config-file configs/Cityscapes-PanopticSegmentation/efficientps_b5_official.yaml \
        --eval-only MODEL.WEIGHTS efficientps_b5_cityscapes_official.pth
"""

import argparse
import os
import sys

from detectron2.modeling import build_model

from efficientps.authors_weights import convert_official_checkpoint
from efficientps.engine.cpu_norms import conversion_cfg

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "Cityscapes-PanopticSegmentation",
    "efficientps_b5_official.yaml",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="the authors' checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="where to write the detectron2 .pth")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="official config to fit")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = conversion_cfg(args.config_file, args.opts)
    model = build_model(cfg)
    try:
        report = convert_official_checkpoint(args.input, args.output, model)
    except (OSError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 1
    meta = report.pop("meta")
    negative = report.pop("iABN scales that were negative")
    print(f"Converted {args.input} -> {args.output}")
    for group, count in report.items():
        print(f"  {group:<14} {count:>5} tensors")
    print(f"  {sum(report.values())} tensors in all; {negative} iABN weights were negative")
    print("  (stored as |weight| + eps: mapillary's in-place ABN scales by that)")
    if meta:
        print("  meta: " + ", ".join(f"{k}={v}" for k, v in sorted(meta.items()) if k != "config"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
