"""The paper's gradient clipping: the L2 norm of all gradients together, at 35."""

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from efficientps.engine import EfficientPSTrainer


def four_tensor_model():
    model = nn.Module()
    for name in "abcd":
        setattr(model, name, nn.Parameter(torch.zeros(4)))
    return model


def solver_cfg(clip_type):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 35.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def step_length(clip_type):
    """One SGD step with each tensor's gradient norm 30, the global norm 60."""
    model = four_tensor_model()
    optimizer = EfficientPSTrainer.build_optimizer(solver_cfg(clip_type), model)
    model.a.grad = torch.full((4,), 15.0)
    model.b.grad = torch.tensor([30.0, 0, 0, 0])
    model.c.grad = torch.tensor([0, -18.0, 24.0, 0])
    model.d.grad = torch.full((4,), -15.0)
    optimizer.step()
    return float(torch.cat([p.detach() for p in model.parameters()]).norm())


def test_full_model_clipping_moves_the_parameters_by_lr_times_35():
    assert step_length("full_model") == pytest.approx(0.1 * 35.0, rel=1e-6)


def test_detectron2_per_tensor_norm_clipping_does_not_act_at_35():
    # Why "full_model" exists: each tensor is under 35, so nothing is clipped.
    assert step_length("norm") == pytest.approx(0.1 * 60.0, rel=1e-6)


def test_full_model_clipping_keeps_momentum_and_state_dict():
    cfg = solver_cfg("full_model")
    cfg.SOLVER.MOMENTUM = 0.9
    model = four_tensor_model()
    optimizer = EfficientPSTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.zeros(4)
        model.a.grad = torch.full((4,), 100.0)
        optimizer.step()
    # step 1: v = g_clipped (norm 35); step 2: v = 0.9 v + g_clipped -> |v| = 35 * 1.9
    assert float(model.a.detach().norm()) == pytest.approx(0.1 * 35.0 * (1 + 1.9), rel=1e-6)
    assert "momentum_buffer" in optimizer.state_dict()["state"][0]
