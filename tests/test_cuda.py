"""The CUDA paths: run by ``make test-gpu`` (pytest -m cuda) on a machine with an NVIDIA GPU.

Skipped, saying so, where ``torch.cuda.is_available()`` is False (every CPU machine, CI here).
What they check on the GPU: iABN and iABN-sync against BatchNorm in float32, float16 and
bfloat16 autocast; ROIAlign against the CPU; a B5 training step at 1024x2048 in float32 and
AMP (time and peak memory, reported); inference through the fusion in float32/float16/bfloat16
against the CPU's segments; train_net.py for 20 iterations with AMP off and on, then
--eval-only.

``EFFICIENTPS_CUDA_TESTS_DEVICE=cpu`` runs the same code on the CPU: a dry run of the tests
themselves (does not check anything about GPUs). ``EFFICIENTPS_GPU_REPORT=FILE`` appends the
measured times and memory as JSON lines.
"""

import json
import os
import time
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from efficientps.data import synthetic
from efficientps.data.datasets import register_synthetic_panoptic
from efficientps.engine.cpu_norms import cpu_safe_norms
from efficientps.modeling import InPlaceABN
from efficientps.modeling.roi_align import FastCPUROIAlign, roi_align_embedding_bag
from efficientps_runtime.agreement import matching_pixel_share

from .helpers import (
    CONFIGS,
    DEMO_CONFIG,
    base_cfg,
    build_randomised,
    load_train_net,
    small_inference_cfg,
)

DEVICE = os.environ.get("EFFICIENTPS_CUDA_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        ON_GPU and not torch.cuda.is_available(),
        reason="CUDA test: torch.cuda.is_available() is False here (make test-gpu on a GPU)",
    ),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Relative tolerance of one comparison in each dtype (a few roundings of its mantissa).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.fixture(autouse=True)
def full_float32():
    """TF32 off for the comparisons (torch lets cuDNN convolutions use it by default)."""
    if not ON_GPU:
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def report(**measurement):
    """Record a measurement (shown with pytest -s; appended to $EFFICIENTPS_GPU_REPORT)."""
    if ON_GPU:
        measurement["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(measurement))
    path = os.environ.get("EFFICIENTPS_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(measurement) + "\n")


def synchronize():
    if ON_GPU:
        torch.cuda.synchronize()


def autocast(dtype):
    return torch.autocast(
        torch.device(DEVICE).type,
        dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        enabled=dtype != torch.float32,
    )


def assert_relative(actual, expected, dtype, what):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    error = (actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)
    assert error <= TOLERANCE[dtype], (what, float(error))


def norm_step(norm, x, grad, slope):
    x = x.clone().requires_grad_(True)
    with autocast(x.dtype if x.dtype != torch.float32 else torch.float32):
        out = norm(x * 1)
        if slope is not None and not isinstance(norm, InPlaceABN):
            out = F.leaky_relu(out, slope)
    (out.float() * grad).sum().backward()
    return out.detach(), x.grad, norm.weight.grad, norm.bias.grad


def bn_pair(channels, slope=0.01):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels).to(DEVICE)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    abn = InPlaceABN(channels, slope=slope).to(DEVICE)
    abn.load_state_dict(bn.state_dict())
    return bn, abn


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_iabn_equals_batchnorm_plus_leaky_relu(dtype):
    bn, abn = bn_pair(32)
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 32, 64, 128, generator=generator) * 2 + 1).to(DEVICE, dtype)
    grad = torch.randn(x.shape, generator=generator).to(DEVICE)
    expected = norm_step(bn, x, grad, 0.01)
    actual = norm_step(abn, x, grad, 0.01)
    assert actual[0].dtype == expected[0].dtype
    for name, a, e in zip(("output", "dx", "dweight", "dbias"), actual, expected):
        assert_relative(a, e, dtype, name)
    assert_relative(abn.running_var, bn.running_var, torch.float32, "running_var")
    empty = InPlaceABN(8).to(DEVICE)
    y = empty(torch.zeros(0, 8, 14, 14, device=DEVICE, requires_grad=True))
    y.sum().backward()
    assert y.shape == (0, 8, 14, 14) and empty.weight.grad.eq(0).all()


def _sync_worker(rank, init_file, x, grad, state, dtype, results):
    gpus = torch.cuda.device_count() if ON_GPU else 0
    device = f"cuda:{rank}" if gpus >= 2 else DEVICE
    backend = "nccl" if gpus >= 2 else "gloo"  # one GPU: both processes share it through gloo
    if ON_GPU:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2)
    abn = InPlaceABN(x.shape[1], slope=None, sync=True).to(device)
    abn.load_state_dict(state)
    half = x.shape[0] // 2
    mine = slice(rank * half, (rank + 1) * half)
    out, dx, dw, db = norm_step(abn, x[mine].to(device, dtype), grad[mine].to(device), None)
    dist.all_reduce(dw), dist.all_reduce(db)  # DDP's reduction of the local parameter grads
    torch.save(
        {"out": out.cpu(), "dx": dx.cpu(), "dw": dw.cpu(), "db": db.cpu(),
         "running_var": abn.running_var.cpu()},
        f"{results}.{rank}",
    )  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_iabn_sync_on_two_processes_equals_batchnorm_on_the_whole_batch(dtype, tmp_path):
    bn, _ = bn_pair(16, slope=None)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 16, 128, 256, generator=generator) * 3 + 2
    grad = torch.randn(x.shape, generator=generator)
    state = {k: v.cpu() for k, v in bn.state_dict().items()}
    results = tmp_path / "result"
    args = (str(tmp_path / "init"), x, grad, state, dtype, str(results))
    mp.spawn(_sync_worker, args=args, nprocs=2, join=True)
    parts = [torch.load(f"{results}.{rank}") for rank in range(2)]
    out, dx, dw, db = norm_step(bn, x.to(DEVICE, dtype), grad.to(DEVICE), None)
    assert_relative(torch.cat([p["out"] for p in parts]), out, dtype, "output")
    assert_relative(torch.cat([p["dx"] for p in parts]), dx, dtype, "dx")
    for part in parts:
        assert part["out"].dtype == dtype
        assert_relative(part["dw"], dw, dtype, "dweight")
        assert_relative(part["db"], db, dtype, "dbias")
        assert_relative(part["running_var"], bn.running_var, torch.float32, "running_var")


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_roi_align_equals_the_cpu_with_float32_boxes(dtype):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 8, 64, 400, generator=generator)
    x0 = torch.rand(30, generator=generator) * 1500
    y0 = torch.rand(30, generator=generator) * 200
    size = 4 + torch.rand(30, 2, generator=generator) * 60
    image = torch.randint(0, 2, (30,), generator=generator).float()
    rois = torch.stack([image, x0, y0, x0 + size[:, 0], y0 + size[:, 1]], dim=1)
    pooler = FastCPUROIAlign((14, 14), 0.25, 2, aligned=True)
    features_low = features.to(dtype)  # the same low-precision values on both devices
    with autocast(dtype):
        pooled = pooler(features_low.to(DEVICE), rois.to(DEVICE))
    assert pooled.dtype == dtype
    expected = roi_align_embedding_bag(
        features_low.double(), rois.double(), (14, 14), 0.25, 2, True
    )
    assert_relative(pooled, expected, dtype, "pooled")
    reference = roi_align(features_low.float(), rois, (14, 14), 0.25, 2, True)
    assert_relative(pooled, reference, dtype, "torchvision CPU")


def b5_training_cfg(amp):
    cfg = base_cfg()
    cfg.merge_from_file(
        str(
            CONFIGS
            / "Cityscapes-PanopticSegmentation"
            / "efficientps_b5_2wayfpn_bs16_1024x2048.yaml"
        )
    )
    cfg.MODEL.DEVICE = DEVICE
    cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = list(range(11))
    cfg.MODEL.EFFICIENTPS.THING_CHANNELS = list(range(11, 19))
    cfg.SOLVER.AMP.ENABLED = amp
    return cpu_safe_norms(cfg, 1, warn=False)


def cityscapes_sized_batch(height=1024, width=2048):
    """One image with stuff bands and 6 box instances (benchmarks/train_step.py's targets)."""
    from detectron2.structures import BitMasks, Instances

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=generator).float()
    sem_seg = (torch.arange(height)[:, None] * 4 // height).expand(height, width).clone()
    masks = torch.zeros(6, height, width, dtype=torch.bool)
    for k in range(6):
        y0, x0 = (k % 2) * height // 2 + height // 16, k * width // 6 + width // 48
        masks[k, y0 : y0 + height // 4, x0 : x0 + width // 8] = True
        sem_seg[masks[k]] = 11 + k
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.arange(6)
    return [{"image": image, "sem_seg": sem_seg, "instances": instances}]


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_b5_training_step_at_1024x2048(amp):
    if not ON_GPU:
        pytest.skip("1024x2048 B5 training on the CPU is a benchmark, not a dry run")
    torch.manual_seed(0)
    model = build_model(b5_training_cfg(amp)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    batch = cityscapes_sized_batch()
    times = []
    torch.cuda.reset_peak_memory_stats()
    with EventStorage():
        for _ in range(4):
            synchronize()
            start = time.perf_counter()
            with autocast(torch.float16 if amp else torch.float32):
                losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            synchronize()
            times.append(time.perf_counter() - start)
            assert torch.isfinite(total), {k: float(v) for k, v in losses.items()}
    peak = torch.cuda.max_memory_allocated() / 2**30
    report(test="b5_training_step_1024x2048", amp=amp, seconds=sorted(times[1:])[1],
           peak_gib=round(peak, 2))  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_inference_through_the_fusion_equals_the_cpu(dtype):
    cfg = small_inference_cfg()
    cpu_model = build_randomised(cfg, seed=4).eval()
    cfg.MODEL.DEVICE = DEVICE
    cfg.MODEL.EFFICIENTPS.INFERENCE_DTYPE = dtype
    model = build_randomised(cfg, seed=4).eval()
    image = torch.rand(3, 256, 512, generator=torch.Generator().manual_seed(5)) * 255
    inputs = [{"image": image, "height": 256, "width": 512}]
    with torch.no_grad():
        expected = cpu_model(inputs)[0]
        actual = model(inputs)[0]
    ids, segments = actual["panoptic_seg"]
    expected_ids, expected_segments = expected["panoptic_seg"]
    share = matching_pixel_share(expected_ids.numpy(), ids.cpu().numpy())
    report(test="inference_vs_cpu", dtype=dtype, identical_pixel_share=share)
    assert share >= (0.999 if dtype == "float32" else 0.97), share
    assert len(actual["instances"]) == len(expected["instances"])
    if dtype == "float32":
        assert_relative(actual["sem_seg"], expected["sem_seg"], torch.float32, "sem_seg")
        names = sorted((s["category_id"], s["isthing"]) for s in segments)
        assert names == sorted((s["category_id"], s["isthing"]) for s in expected_segments)


@pytest.fixture(scope="module")
def synthetic_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_datasets")
    names = {}
    for split, count in (("train", 8), ("val", 4)):
        synthetic.generate_split(
            str(root / "synthetic"), split, count, seed=1, size=(128, 256), progress=False
        )
        names[split] = f"synth_gpu_{split}_{uuid.uuid4().hex[:6]}"
        register_synthetic_panoptic(names[split], str(root / "synthetic"), split)
    return names


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_train_net_20_iterations_then_eval_only(amp, synthetic_splits, tmp_path):
    if amp and not ON_GPU:
        pytest.skip("detectron2's AMPTrainer needs CUDA")
    train_net = load_train_net()
    common = [
        "MODEL.DEVICE", DEVICE, "SOLVER.AMP.ENABLED", str(amp),
        "INPUT.CROP.SIZE", "[128, 256]", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "5", "DATALOADER.NUM_WORKERS", "2",
        "DATASETS.TRAIN", f"('{synthetic_splits['train']}',)",
        "DATASETS.TEST", f"('{synthetic_splits['val']}',)", "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, *common, "SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "(15,)"]
    )
    start = time.perf_counter()
    train_net.main(args)
    seconds = time.perf_counter() - start
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(loss == loss and abs(loss) < 1e4 for loss in losses)  # finite
    weights = tmp_path / "model_final.pth"
    args = train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "--eval-only", *common, "MODEL.WEIGHTS", str(weights)]
    )
    results = train_net.main(args)
    assert set(results) >= {"panoptic_seg", "sem_seg"}
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100
    report(test="train_net_20_iterations", amp=amp, seconds=round(seconds, 1),
           PQ=results["panoptic_seg"]["PQ"])  # fmt: skip
