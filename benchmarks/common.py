"""Shared pieces of the benchmark scripts: timing, peak memory, model builders, tables."""

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from fvcore.nn import parameter_count

from efficientps import add_efficientps_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CITYSCAPES_CONFIG = os.path.join(
    REPO, "configs", "Cityscapes-PanopticSegmentation", "efficientps_b5_2wayfpn_bs16_1024x2048.yaml"
)


def machine_line(device="cpu"):
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return (
            f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, torch {torch.__version__}, "
            f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
        )
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu} ({cpu_features()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


# The CPU features that decide how bf16 and int8 run (and whether OpenVINO picks bf16 itself).
CPU_FEATURES = (
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
)


def cpu_features():
    """'AVX512-BF16, AVX512-VNNI, no AMX': the reduced-precision features /proc/cpuinfo lists."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "CPU flags unknown"
    names = [name for flag, name in CPU_FEATURES if flag in flags]
    if not any(flag.startswith("amx") for flag in flags):
        names.append("no AMX")
    return ", ".join(names) or "no AVX512-BF16, VNNI or AMX"


def median_seconds(fn, runs=3, warmup=1, device="cpu"):
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` calls (on a GPU, each
    call waits for its kernels)."""
    synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_memory_mb(device="cpu"):
    """Peak memory of this process: resident (CPU) or allocated on the GPU (CUDA)."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def peak_rss_mb():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh():
    gc.collect()


def efficientps_cfg(config=CITYSCAPES_CONFIG, opts=(), device="cpu"):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", device, *opts])
    # The class tables come from the config, so no dataset has to be on disk.
    if not cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS:
        cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = list(range(11))
        cfg.MODEL.EFFICIENTPS.THING_CHANNELS = list(range(11, 19))
    return cfg


def panoptic_fpn_r50_cfg(num_stuff_plus_one=12, num_things=8, device="cpu"):
    """detectron2's Panoptic FPN R50 (its Base-RCNN-FPN + panoptic keys), random weights."""
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_things
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_stuff_plus_one
    cfg.INPUT.MIN_SIZE_TEST = 1024
    cfg.INPUT.MAX_SIZE_TEST = 2048
    return cfg


def build(cfg, what="model"):
    torch.manual_seed(0)
    module = build_model(cfg) if what == "model" else build_backbone(cfg)
    return module.eval()


def count_parameters(module):
    return parameter_count(module)[""]


def run_worker(script, arguments, env=None):
    """Run ``python script arguments`` (a fresh process: its own peak RSS and allocator) and
    return the JSON object its last line of output prints."""
    command = [sys.executable, script, *arguments]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fvcore_gflops(module, inputs):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def print_table(title, header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = "| " + " | ".join(f"{h:<{w}}" for h, w in zip(header, widths)) + " |"
    print(f"\n{title}\n")
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(f"{str(x):<{w}}" for x, w in zip(row, widths)) + " |")
    sys.stdout.flush()
