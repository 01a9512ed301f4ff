"""Whole-model training under autocast (detectron2's AMPTrainer: float16 + gradient scaling)
and inference in float16/bfloat16, emulated on the CPU."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps.modeling import InPlaceABN

from .helpers import small_cfg, training_sample


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_amp_training_steps_with_iabn(dtype):
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    assert any(isinstance(m, InPlaceABN) for m in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # AMPTrainer's scaler: steps whose float16 gradients overflow are skipped and the scale
    # halves (its first scale, 65536, overflows by design); the others must be finite.
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    initial = [p.detach().clone() for p in model.parameters()]
    batches = [
        [training_sample(96, 128), training_sample(96, 128, boxes=(), classes=())],
        [training_sample(96, 128, boxes=(), classes=())] * 2,  # no thing in the whole batch
    ]
    taken = 0
    with EventStorage():
        for step in range(6):
            with torch.autocast("cpu", dtype=dtype):
                losses = model(batches[step % 2])
            total = sum(losses.values())
            assert torch.isfinite(total), {k: float(v) for k, v in losses.items()}
            optimizer.zero_grad()
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            if not scaler.is_enabled() or scaler.get_scale() >= scale:  # not skipped
                taken += 1
                grads = [p.grad for p in model.parameters()]
                assert all(torch.isfinite(g).all() for g in grads)
    assert taken >= 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, before) for p, before in zip(model.parameters(), initial))
    for name, buffer in model.named_buffers():
        assert torch.isfinite(buffer.float()).all(), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_inference_keeps_float32_outputs(dtype):
    cfg = small_cfg()
    cfg.MODEL.EFFICIENTPS.INFERENCE_DTYPE = dtype
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        output = model([{"image": image, "height": 96, "width": 128}])[0]
    assert output["sem_seg"].dtype == torch.float32
    assert output["instances"].pred_boxes.tensor.dtype == torch.float32
    assert len(output["instances"]) > 0  # the detections went through the fusion
    ids, segments = output["panoptic_seg"]
    assert ids.shape == (96, 128) and segments
