"""Activation checkpointing of the backbone blocks: same step, less kept for backward."""

import copy

import pytest
import torch
from detectron2.modeling import build_backbone

from efficientps.modeling.inplace_abn import convert_to_inplace_abn

from .helpers import backbone_cfg, kept_bytes


def training_step(backbone, image):
    torch.manual_seed(5)  # drop-connect draws: the recomputation must replay them
    features, kept = kept_bytes(lambda: backbone(image))
    weights = {k: torch.linspace(-1, 1, v.numel()).reshape(v.shape) for k, v in features.items()}
    sum((features[k] * weights[k]).sum() for k in features).backward()
    return features, kept


@pytest.mark.parametrize("inplace_abn", [True, False])
def test_checkpointed_blocks_give_the_same_step_and_keep_less(inplace_abn):
    cfg = backbone_cfg("efficientnet-b0")
    cfg.MODEL.EFFICIENTNET.DROP_CONNECT_RATE = 0.5
    torch.manual_seed(0)
    plain = build_backbone(cfg).bottom_up.train()
    if inplace_abn:
        convert_to_inplace_abn(plain)
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    image = torch.rand(2, 3, 96, 128)

    expected, plain_bytes = training_step(plain, image)
    got, checkpointed_bytes = training_step(checkpointed, image)

    for tap in expected:
        assert torch.equal(got[tap], expected[tap]), tap
    plain_state, state = plain.state_dict(), checkpointed.state_dict()
    for key in plain_state:  # running statistics updated once, as without checkpointing
        assert torch.equal(state[key], plain_state[key]), key
    plain_grads = dict(plain.named_parameters())
    for name, parameter in checkpointed.named_parameters():
        assert torch.equal(parameter.grad, plain_grads[name].grad), name
    print(f"kept for backward: {plain_bytes / 2**20:.1f} MB -> {checkpointed_bytes / 2**20:.1f} MB")
    assert checkpointed_bytes < plain_bytes / 4


def test_config_key_reaches_the_backbone_and_inference_ignores_it():
    cfg = backbone_cfg("efficientnet-b0")
    cfg.MODEL.EFFICIENTNET.ACTIVATION_CHECKPOINTING = True
    bottom_up = build_backbone(cfg).bottom_up
    assert bottom_up.activation_checkpointing
    bottom_up.eval()
    with torch.no_grad():
        assert set(bottom_up(torch.rand(1, 3, 64, 96))) == {"res2", "res3", "res4", "res5"}


def test_whole_model_step_with_every_checkpointing_key_is_the_plain_step():
    from detectron2.utils.events import EventStorage

    from .helpers import build_randomised, small_inference_cfg, training_sample

    keys = [
        "MODEL.EFFICIENTNET.ACTIVATION_CHECKPOINTING",
        "MODEL.TWO_WAY_FPN.ACTIVATION_CHECKPOINTING",
        "MODEL.SEM_SEG_HEAD.ACTIVATION_CHECKPOINTING",
    ]
    plain = build_randomised(small_inference_cfg()).train()
    checkpointed = build_randomised(small_inference_cfg(**{key: True for key in keys})).train()
    assert checkpointed.backbone.activation_checkpointing
    assert checkpointed.sem_seg_head.activation_checkpointing

    def step(model):
        torch.manual_seed(3)
        with EventStorage():
            losses, kept = kept_bytes(lambda: model([training_sample(128, 192)]))
        sum(losses.values()).backward()
        return losses, kept

    expected, plain_bytes = step(plain)
    got, checkpointed_bytes = step(checkpointed)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    plain_parameters = dict(plain.named_parameters())
    for name, parameter in checkpointed.named_parameters():
        if parameter.grad is not None or plain_parameters[name].grad is not None:
            assert torch.equal(parameter.grad, plain_parameters[name].grad), name
    plain_state = plain.state_dict()
    for key, value in checkpointed.state_dict().items():
        assert torch.equal(value, plain_state[key]), key
    assert checkpointed_bytes < plain_bytes / 2
