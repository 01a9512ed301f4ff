"""Mixed-precision training (SOLVER.AMP.ENABLED on GPUs) through iABN and activation checkpointing.

Autocast runs here in bfloat16 on the CPU; the same code runs float16 on GPUs (detectron2's
AMPTrainer is CUDA-only). The memory-saving machinery must compute under autocast what the plain
model computes under autocast: iABN recovers each BN input from its bfloat16 output, so its
gradients differ from plain BN's by the rounding of that output (2^-8 relative per layer, a few
percent after the ~20 layers between the stem and the losses); checkpointing recomputes the same
forward. Against float32, the losses agree to bfloat16's precision; the backbone's gradient
direction at random initialisation does not (a deep random net amplifies rounding: measured
cosine ~0.1 for plain BN as for iABN), so it is not compared.
"""

import copy

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from .helpers import small_inference_cfg, training_sample

MEMORY_SAVING = {
    "MODEL.EFFICIENTPS.INPLACE_ABN": True,
    "MODEL.EFFICIENTNET.ACTIVATION_CHECKPOINTING": True,
    "MODEL.TWO_WAY_FPN.ACTIVATION_CHECKPOINTING": True,
    "MODEL.SEM_SEG_HEAD.ACTIVATION_CHECKPOINTING": True,
}


def training_step(model, sample, autocast):
    torch.manual_seed(0)  # the same RPN/ROI sampling in every run
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model([sample])
    sum(losses.values()).backward()
    gradients = {
        n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
    }
    return {k: v.detach().float() for k, v in losses.items()}, gradients


def test_bfloat16_step_with_iabn_and_checkpointing_matches_plain_autocast():
    torch.manual_seed(0)
    plain = build_model(small_inference_cfg(**{"MODEL.EFFICIENTPS.INPLACE_ABN": False})).train()
    saving = build_model(small_inference_cfg(**MEMORY_SAVING)).train()
    saving.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    sample = training_sample(128, 192)

    losses_fp32, _ = training_step(copy.deepcopy(plain), sample, autocast=False)
    losses_plain, grads_plain = training_step(copy.deepcopy(plain), sample, autocast=True)
    losses_saving, grads_saving = training_step(saving, sample, autocast=True)

    assert all(torch.isfinite(v) for v in losses_saving.values())
    assert all(torch.isfinite(g).all() for g in grads_saving.values())
    assert set(grads_saving) == set(grads_plain) == {n for n, _ in saving.named_parameters()}
    for key, value in losses_fp32.items():  # bfloat16 keeps 8 bits of mantissa
        if key != "loss_box_reg":  # box targets of the sampled proposals, which bf16 may move
            assert abs(losses_plain[key] - value) <= 0.01 * abs(value) + 1e-3, key
    for key, value in losses_plain.items():  # the same forward, in the same precision
        torch.testing.assert_close(losses_saving[key], value, rtol=1e-6, atol=0)
    for part in ("backbone.bottom_up", "backbone.lateral", "backbone.output", "sem_seg_head",
                 "proposal_generator", "roi_heads"):  # fmt: skip
        names = [n for n in grads_plain if n.startswith(part)]
        expected = torch.cat([grads_plain[n].flatten() for n in names])
        got = torch.cat([grads_saving[n].flatten() for n in names])
        assert (got - expected).norm() <= 0.05 * expected.norm(), part
        assert F.cosine_similarity(got, expected, dim=0) > 0.998, part
