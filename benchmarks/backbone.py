#!/usr/bin/env python
"""Backbone benchmark: EfficientNet-b0/b5 + 2-way FPN against detectron2's ResNet-50 FPN.

    python benchmarks/backbone.py [--size 1024x2048] [--runs 3]

Parameters, fvcore FLOPs and CPU latency (median of --runs after a warm-up, torch.inference_mode)
at one input size, all measured in this run; the ratio column is against R50-FPN. Our backbones
run as users get them after ``eval()`` (BatchNorm folded into cached conv weights, channels_last
on the CPU); "plain" is the same b5 network with that switched off (conv -> BN -> activation, the
training path), checked to give the same features.
"""

import argparse

import torch
from common import (
    build,
    count_parameters,
    efficientps_cfg,
    fvcore_gflops,
    machine_line,
    median_seconds,
    panoptic_fpn_r50_cfg,
    print_table,
)

from efficientps.modeling import configure_inference


def backbones():
    for name in ("efficientnet-b0", "efficientnet-b5"):
        yield name + " + 2-way FPN", build(
            efficientps_cfg(opts=["MODEL.EFFICIENTNET.NAME", name]), "backbone"
        )
    yield "R50-FPN (detectron2)", build(panoptic_fpn_r50_cfg(), "backbone")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x2048", help="HxW input")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    image = torch.randn(1, 3, height, width)
    print(f"Backbone benchmark at {height}x{width} on: {machine_line()}")

    measured = []
    for name, backbone in backbones():
        with torch.inference_mode():
            seconds, _ = median_seconds(lambda b=backbone: b(image), runs=args.runs)
        flops = float("nan") if args.no_flops else fvcore_gflops(backbone, (image,))
        measured.append((name, count_parameters(backbone), flops, seconds))
        if name.startswith("efficientnet-b5"):
            with torch.inference_mode():
                output = backbone(image)
                configure_inference(backbone, fold_norm=False, channels_last_devices=())
                reference = backbone(image)
                difference = max(float((reference[k] - output[k]).abs().max()) for k in output)
                seconds, _ = median_seconds(lambda b=backbone: b(image), runs=args.runs)
            measured.append(
                (name + ", plain", count_parameters(backbone), flops, seconds, difference)
            )
    baseline = measured[-1][3]
    rows = []
    for entry in measured:
        name, params, flops, seconds = entry[:4]
        note = f"max |diff| {entry[4]:.1e}" if len(entry) > 4 else ""
        rows.append(
            (name, f"{params / 1e6:.2f} M", f"{flops:.1f}", f"{seconds * 1000:.0f}",
             f"{seconds / baseline:.2f}", note)
        )  # fmt: skip
    print_table(
        f"Backbone latency, CPU, {height}x{width}, median of {args.runs}",
        ("backbone", "params", "GFLOPs", "ms", "x R50-FPN", "note"),
        rows,
    )


if __name__ == "__main__":
    main()
