"""cfg.NUMERICS: TF32 and deterministic algorithms set explicitly in each process."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps.engine.numerics import configure_numerics

from .helpers import base_cfg, small_cfg, training_sample


def fp32_precisions():
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    legacy = {True: "tf32", False: "ieee"}
    return legacy[torch.backends.cudnn.allow_tf32], legacy[torch.backends.cuda.matmul.allow_tf32]


@pytest.fixture
def restored_torch_state(monkeypatch):
    before = (fp32_precisions(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    (conv, matmul), deterministic, benchmark = before
    cfg = base_cfg()
    cfg.NUMERICS.TF32_CONVOLUTIONS, cfg.NUMERICS.TF32_MATMUL = conv == "tf32", matmul == "tf32"
    configure_numerics(cfg)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark
    torch.use_deterministic_algorithms(False)


def test_tf32_keys_set_both_backends(restored_torch_state):
    cfg = base_cfg()
    configure_numerics(cfg)
    assert fp32_precisions() == ("tf32", "ieee")  # torch's defaults, now explicit
    cfg.NUMERICS.TF32_CONVOLUTIONS, cfg.NUMERICS.TF32_MATMUL = False, True
    configure_numerics(cfg)
    assert fp32_precisions() == ("ieee", "tf32")


def test_deterministic_turns_tf32_and_benchmark_off(restored_torch_state):
    cfg = base_cfg()
    cfg.NUMERICS.TF32_MATMUL = True
    cfg.NUMERICS.DETERMINISTIC = True
    torch.backends.cudnn.benchmark = True
    configure_numerics(cfg)
    assert fp32_precisions() == ("ieee", "ieee")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_cpu_training_step_is_bit_reproducible():
    def step():
        torch.manual_seed(0)
        model = build_model(small_cfg()).train()
        batch = [training_sample(96, 128), training_sample(96, 128, boxes=(), classes=())]
        with EventStorage():
            losses = model(batch)
            sum(losses.values()).backward()
        return losses, torch.cat([p.grad.flatten() for p in model.parameters()])

    (losses_a, grads_a), (losses_b, grads_b) = step(), step()
    assert {k: float(v) for k, v in losses_a.items()} == {k: float(v) for k, v in losses_b.items()}
    assert torch.equal(grads_a, grads_b)
