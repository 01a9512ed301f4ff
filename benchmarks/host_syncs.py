#!/usr/bin/env python
"""Host-device synchronisations per training step and per inference, counted on the CPU.

    python benchmarks/host_syncs.py [--size 256x512] [--detections 50]

On a GPU, every operation whose result the host must read stalls the host until the device
has caught up: ``.item()``/``int()``/``bool()`` of a tensor, ``.tolist()``, ``nonzero`` and
boolean-mask indexing (their output size depends on the data), ``unique``, copies to the host.
Each one on the training path costs the overlap of host and device. This script counts those
calls while EfficientPS-b5 (Cityscapes config, random weights) runs a training step (after
one warm-up step and an optimizer step, as in training) and an inference with fusion, and
lists them by the source file that made them, torch excluded. ROIAlign runs torchvision's
kernel, the one a GPU runs (the CPU's embedding-bag ROIAlign is not counted).

What it cannot tell apart on a CPU: syncs inside C++ kernels are not seen (bincount on CUDA
reads its maximum), and CPU-only code paths are counted as they run here: detectron2's
``paste_masks_in_image`` (layers/mask_ops.py) pastes one mask at a time with host reads on the
CPU only; on a GPU it pastes in chunks without them.
"""

import argparse
import sys

import torch
from common import efficientps_cfg, machine_line, print_table
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from train_step import batch, sgd_step

from efficientps.engine.host_syncs import SyncCounter


def use_gpu_roi_align():
    """Count what a GPU runs: torchvision's ROIAlign instead of the CPU embedding-bag one."""
    from efficientps.modeling import roi_align

    roi_align.capturing_a_graph = lambda: True


def count_training_step(cfg, height, width):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    step = sgd_step(model, batch(height, width, 19, thing_offset=11) * 2)
    with EventStorage(0):
        step()  # warm-up: caches, lazy buffers
        with SyncCounter() as counter:
            step()
    return counter


def count_inference(cfg, height, width, detections):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep `detections` of them
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = detections
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    inputs = [{"image": image, "height": height, "width": width}]
    with torch.no_grad():
        model(inputs)
        with SyncCounter() as counter:
            outputs = model(inputs)
    return counter, len(outputs[0]["instances"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512", help="HxW of the training crop and image")
    parser.add_argument("--detections", type=int, default=50)
    parser.add_argument("--top", type=int, default=12, help="rows of the per-file tables")
    args = parser.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    use_gpu_roi_align()
    cfg = efficientps_cfg(opts=["MODEL.EFFICIENTNET.NORM", "BN", "MODEL.TWO_WAY_FPN.NORM", "BN",
                                "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.ROI_MASK_HEAD.NORM", "BN",
                                "MODEL.RPN.POST_NMS_TOPK_TRAIN", "500"])  # fmt: skip
    print(f"Host synchronisations on: {machine_line()}", file=sys.stderr)
    train = count_training_step(cfg, height, width)
    infer, kept = count_inference(cfg, height, width, args.detections)
    rows = []
    for name, counter in (("training step (batch 2)", train), (f"inference, {kept} dets", infer)):
        files = counter.by_file()
        rows += [(name, path, n) for path, n in files.most_common(args.top)]
        rows.append((name, "total", counter.total()))
    print_table(
        f"Host synchronisations, EfficientPS-b5 (iABN), {args.size}",
        ("what", "file", "syncs"),
        rows,
    )


if __name__ == "__main__":
    main()
