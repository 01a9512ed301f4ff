#!/usr/bin/env python
"""Convert ImageNet EfficientNet weights (timm / gen-efficientnet, efficientnet-pytorch) once.

    python tools/convert_imagenet_checkpoint.py --input tf_efficientnet_b5_ra-9a3e5369.pth \
        --output weights/tf_efficientnet_b5_ra_in1k_backbone.pth
    python train_net.py --config-file configs/Cityscapes-PanopticSegmentation/...yaml \
        MODEL.WEIGHTS weights/tf_efficientnet_b5_ra_in1k_backbone.pth

The input is a local file (.pth, .bin or .safetensors; e.g. timm's ``tf_efficientnet_b5.ra_in1k``
``model.safetensors``, the authors' init); nothing is downloaded. Every backbone tensor is mapped
onto EfficientNet of ``--config-file`` (default: the Cityscapes paper config); squeeze-excitation
(removed in EfficientPS) and the classifier are dropped and counted. The output holds the
backbone's keys only, for ``MODEL.WEIGHTS`` (detectron2 then lists the heads as missing, as for
any ImageNet initialisation). A variant that does not fit fails naming the first key and both
shapes; weights trained in PyTorch (timm's ``efficientnet_b*``, symmetric padding, BN eps 1e-5)
need MODEL.EFFICIENTNET.PADDING symmetric and NORM_EPS 1e-5, which the tool checks.
"""

import argparse
import os
import sys

import torch
from detectron2.modeling import build_backbone

from efficientps.engine.cpu_norms import conversion_cfg
from efficientps.imagenet_weights import (
    ImageNetWeightsError,
    check_source_settings,
    convert_state_dict,
    describe,
    layout_of,
    read_state_dict,
    source_family,
)
from efficientps.modeling.backbone import EfficientNet

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "Cityscapes-PanopticSegmentation",
    "efficientps_b5_2wayfpn_bs16_1024x2048.yaml",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="ImageNet weights (.pth/.bin/.safetensors)")
    parser.add_argument("--output", required=True, help="the backbone checkpoint to write")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="the config to train with")
    parser.add_argument(
        "--source",
        choices=["auto", "tf", "pytorch"],
        default="auto",
        help="how the weights were trained: tf (TF ports: tf_*, efficientnet-pytorch) or "
        "pytorch (timm's efficientnet_b*); auto: from the file name",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def efficientnet_of(backbone):
    """(prefix of its keys in the model, the EfficientNet) inside a built backbone."""
    for name, module in backbone.named_modules():
        if isinstance(module, EfficientNet):
            return "backbone." + (name + "." if name else ""), module
    raise ImageNetWeightsError("the config's backbone has no EfficientNet (MODEL.BACKBONE.NAME)")


def main(argv=None):
    args = parse_args(argv)
    cfg = conversion_cfg(args.config_file, args.opts)
    cfg.MODEL.EFFICIENTNET.WEIGHTS = ""
    try:
        state = read_state_dict(args.input)
        family = source_family(args.input, layout_of(state, args.input), args.source)
        if family is None:
            family = "tf"
            print(
                "note: cannot tell from the file name whether these are TF-trained (tf_*) or "
                "PyTorch-trained (efficientnet_b*) weights; assuming tf (the authors' init). "
                "Pass --source to say.",
                file=sys.stderr,
            )
        check_source_settings(cfg.MODEL.EFFICIENTNET, family)
        prefix, efficientnet = efficientnet_of(build_backbone(cfg))
        converted, report = convert_state_dict(state, efficientnet, args.input)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(
        {
            "model": {prefix + key: value for key, value in converted.items()},
            "__author__": "efficientps tools/convert_imagenet_checkpoint.py",
            "source": os.path.basename(args.input),
        },
        args.output,
    )
    print(f"Converted {args.input} -> {args.output}")
    print(f"  {describe(report)}")
    print(f"  {family}-trained weights for {efficientnet.name}; keys under '{prefix}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
