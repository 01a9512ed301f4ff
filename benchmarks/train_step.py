#!/usr/bin/env python
"""CPU training step: EfficientPS-b5 (Cityscapes config) vs detectron2's Panoptic FPN R50.

    python benchmarks/train_step.py [--size 512x1024] [--runs 3]

Seconds per training iteration (forward, backward, SGD step) at batch 1 with a crop of --size,
and the peak RSS of the process, for both models with random weights, 19 classes, the same
synthetic targets (stuff regions and 6 instances). Each model runs in its own child process.
EfficientPS runs three times: with BatchNorm + LeakyReLU; with in-place activated BN (iABN, the
paper's and our default, MODEL.EFFICIENTPS.INPLACE_ABN), which gives the same function; and with
iABN plus activation checkpointing of every backbone block, the 2-way FPN and the semantic head
(MODEL.{EFFICIENTNET,TWO_WAY_FPN,SEM_SEG_HEAD}.ACTIVATION_CHECKPOINTING), which gives the same
gradients.
"""

import argparse
import json
import os

import torch
from common import (
    build,
    efficientps_cfg,
    machine_line,
    median_seconds,
    panoptic_fpn_r50_cfg,
    peak_memory_mb,
    print_table,
    run_worker,
)
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage


def batch(height, width, semantic_classes, thing_offset):
    """One image with stuff bands and 6 box-shaped instances of classes 0..5."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    sem_seg = torch.zeros(height, width, dtype=torch.long)
    for band in range(4):
        sem_seg[band * height // 4 : (band + 1) * height // 4] = band
    masks = torch.zeros(6, height, width, dtype=torch.bool)
    for k in range(6):
        y0, x0 = (k % 2) * height // 2 + height // 16, k * width // 6 + width // 48
        masks[k, y0 : y0 + height // 4, x0 : x0 + width // 8] = True
        sem_seg[masks[k]] = thing_offset + k if thing_offset is not None else 0
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.arange(6)
    return [{"image": image.float(), "sem_seg": sem_seg.clamp(max=semantic_classes - 1),
             "instances": instances, "height": height, "width": width}]  # fmt: skip


MODELS = {
    "panoptic_fpn": "Panoptic FPN R50",
    "efficientps_bn": "EfficientPS-b5, BN + LeakyReLU",
    "efficientps_iabn": "EfficientPS-b5, iABN (default)",
    "efficientps_iabn_ckpt": "EfficientPS-b5, iABN + activation checkpointing",
}
# On a GPU, also detectron2's AMP (SOLVER.AMP.ENABLED: float16 autocast + gradient scaling).
GPU_MODELS = {
    "panoptic_fpn_amp": "Panoptic FPN R50, AMP float16",
    "efficientps_iabn_amp": "EfficientPS-b5, iABN, AMP float16",
}


def sgd_step(model, inputs, amp=False):
    """One training iteration as detectron2's SimpleTrainer / AMPTrainer runs it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    device = next(model.parameters()).device.type
    scaler = torch.amp.GradScaler(device, enabled=amp)

    def step():
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            losses = model(inputs)
        optimizer.zero_grad()
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def worker(kind, height, width, runs, device="cpu"):
    amp = kind.endswith("_amp")
    kind = kind.removesuffix("_amp")
    if kind.startswith("efficientps"):
        inplace_abn = str(kind.startswith("efficientps_iabn"))
        checkpointing = str(kind.endswith("_ckpt"))
        model = build(
            efficientps_cfg(
                opts=[
                    "MODEL.EFFICIENTPS.INPLACE_ABN", inplace_abn,
                    "MODEL.EFFICIENTNET.ACTIVATION_CHECKPOINTING", checkpointing,
                    "MODEL.TWO_WAY_FPN.ACTIVATION_CHECKPOINTING", checkpointing,
                    "MODEL.SEM_SEG_HEAD.ACTIVATION_CHECKPOINTING", checkpointing,
                ],
                device=device,
            )
        )  # fmt: skip
        inputs = batch(height, width, 19, thing_offset=11)
    else:
        cfg = panoptic_fpn_r50_cfg(device=device)
        # Trainable BatchNorm like ours: with random weights, FrozenBN (ImageNet statistics
        # expected) lets the activations of a 50-layer ResNet overflow and training diverges.
        cfg.MODEL.RESNETS.NORM = "BN"
        model = build(cfg)
        inputs = batch(height, width, 12, thing_offset=None)  # PanopticFPN: things = class 0
    model.train()
    step = sgd_step(model, inputs, amp)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with EventStorage(0):
        seconds, times = median_seconds(step, runs=runs, device=device)
    return {"seconds": seconds, "times": times, "peak_rss_mb": peak_memory_mb(device)}


# glibc's malloc raises its mmap threshold as large blocks are freed, after which large tensors
# come from the heap, whose freed holes it keeps: the peak RSS then grows over the first
# iterations with how fragmented the allocation sizes are, not with what the model holds.
# A fixed threshold (131072 bytes) returns every large block at once. Both settings are
# measured for every model; GPU memory (CUDA's caching allocator) is not affected by either.
ALLOCATORS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def run_child(kind, size, runs, allocator="glibc default", device="cpu"):
    arguments = ["--worker", kind, "--size", size, "--runs", str(runs), "--device", device]
    return run_worker(__file__, arguments, env=dict(os.environ, **ALLOCATORS[allocator]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x1024", help="HxW crop")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=[*MODELS, *GPU_MODELS])
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (GPU: memory is CUDA's peak allocation)"
    )
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    if args.worker:
        print(json.dumps(worker(args.worker, height, width, args.runs, args.device)))
        return
    print(f"Training-step benchmark on: {machine_line(args.device)}")
    rows = []
    on_gpu = args.device.startswith("cuda")
    for allocator in ALLOCATORS if not on_gpu else ["glibc default"]:
        kinds = [*MODELS, *(GPU_MODELS if on_gpu else ())]
        results = {
            kind: run_child(kind, args.size, args.runs, allocator, args.device) for kind in kinds
        }
        baseline = results["panoptic_fpn"]
        rows += [
            (allocator, {**MODELS, **GPU_MODELS}[kind], f"{r['seconds']:.2f}",
             f"{r['seconds'] / baseline['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}",
             f"{r['peak_rss_mb'] / baseline['peak_rss_mb']:.2f}")
            for kind, r in results.items()
        ]  # fmt: skip
    print_table(
        f"Training step on {args.device}, batch 1, crop {args.size}, median of {args.runs} "
        "after a warm-up",
        (
            "malloc",
            "model",
            "s/iter",
            "x PFPN",
            "peak GPU MB" if on_gpu else "peak RSS MB",
            "x PFPN",
        ),
        rows,
    )


if __name__ == "__main__":
    main()
