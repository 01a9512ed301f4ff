"""The inference path users run (build_model + load + eval, no autograd) is the fast one.

ConvNormAct folds BatchNorm into cached weights at inference and runs channels_last on the CPU;
these tests pin that it is taken with no extra call, that it computes what the plain path
computes, that the trainable parameters and checkpoints never change, that loading weights
after the first forward is seen, and that training afterwards is exactly a fresh model's.
"""

import copy

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.utils.events import EventStorage
from torch import nn

from efficientps.modeling import ConvNormAct, configure_inference
from efficientps.modeling.inplace_abn import InPlaceABN

from .helpers import build_randomised as build
from .helpers import small_inference_cfg as model_cfg
from .helpers import training_sample


def inputs(height=96, width=131):
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(3))
    return [{"image": image.float(), "height": height, "width": width}]


class NormCalls:
    """Counts forward calls of every BatchNorm in a model."""

    def __init__(self, model):
        self.count = 0
        self.handles = [
            m.register_forward_hook(self.hook)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def hook(self, *args):
        self.count += 1


def assert_same_prediction(fast, plain):
    torch.testing.assert_close(fast["sem_seg"], plain["sem_seg"], atol=1e-4, rtol=0)
    assert len(plain["instances"]) > 0
    torch.testing.assert_close(
        fast["instances"].pred_mask_logits, plain["instances"].pred_mask_logits, atol=1e-3, rtol=0
    )
    assert torch.equal(fast["panoptic_seg"][0], plain["panoptic_seg"][0])


@pytest.mark.parametrize("inplace_abn", [True, False])
def test_eval_without_autograd_folds_every_batchnorm_and_matches_the_plain_path(inplace_abn):
    model = build(model_cfg(**{"MODEL.EFFICIENTPS.INPLACE_ABN": inplace_abn})).eval()
    plain_model = copy.deepcopy(model)
    assert configure_inference(plain_model, fold_norm=False, channels_last_devices=()) > 100
    calls = NormCalls(model)
    with torch.no_grad():
        fast = model(inputs())[0]
    assert calls.count == 0  # every BN was folded: none ran
    with torch.no_grad():
        plain = plain_model(inputs())[0]
    assert_same_prediction(fast, plain)
    if inplace_abn:  # the folded iABN layer applies the activation it carries
        assert any(isinstance(m.norm, InPlaceABN) for m in model.modules() if hasattr(m, "norm"))


def test_the_fast_path_runs_channels_last_on_cpu_only_where_configured():
    model = build(model_cfg()).eval()
    layouts = []
    stem = model.backbone.bottom_up.stem
    stem.register_forward_hook(
        lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        model(inputs())
    configure_inference(model, channels_last_devices=())
    with torch.no_grad():
        model(inputs())
    assert layouts == [True, False]


def test_state_dict_stays_the_trainable_parameters():
    model = build(model_cfg()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(inputs())
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
        assert after[key].is_contiguous(), key  # no channels_last parameter leaks out


def test_weights_loaded_after_the_first_forward_are_used(tmp_path):
    # DefaultPredictor's order is build -> eval -> load; a user may also reload another file.
    trained = build(model_cfg(), seed=1).eval()
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("trained")
    with torch.no_grad():
        expected = trained(inputs())[0]
    model = build(model_cfg(), seed=0).eval()
    with torch.no_grad():
        model(inputs())  # folds seed-0 weights
        DetectionCheckpointer(model).load(str(tmp_path / "trained.pth"))
        got = model(inputs())[0]
    assert_same_prediction(got, expected)


def test_training_after_inference_is_a_fresh_models_training():
    cfg = model_cfg()
    model = build(cfg)
    fresh = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        model(inputs())
    assert any(getattr(m, "_inference_weights", None) for m in model.modules())
    model.train()
    assert not any(getattr(m, "_inference_weights", None) for m in model.modules())

    def step(m):
        torch.manual_seed(7)
        with EventStorage():
            losses = m([training_sample(128, 192)])
        total = sum(losses.values())
        total.backward()
        return {k: v.detach() for k, v in losses.items()}, {
            n: p.grad for n, p in m.named_parameters() if p.grad is not None
        }

    losses, grads = step(model)
    fresh_losses, fresh_grads = step(fresh)
    assert losses.keys() == fresh_losses.keys()
    for key in losses:
        assert torch.equal(losses[key], fresh_losses[key]), key
    assert grads.keys() == fresh_grads.keys() and len(grads) > 100
    for name in grads:
        assert torch.equal(grads[name], fresh_grads[name]), name


def test_eval_with_autograd_runs_the_plain_path_and_keeps_gradients():
    # e.g. saliency or attacks through the backbone: gradients must reach the BN parameters.
    backbone = build(model_cfg()).backbone.eval()
    calls = NormCalls(backbone)
    features = backbone(inputs()[0]["image"][None] / 255)
    assert calls.count > 50
    sum(f.sum() for f in features.values()).backward()
    assert backbone.bottom_up.stem.norm.weight.grad is not None


def test_default_predictor_gets_the_fast_path(tmp_path):
    cfg = model_cfg()
    trained = build(cfg, seed=1)
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("trained")
    cfg.MODEL.WEIGHTS = str(tmp_path / "trained.pth")
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 160
    predictor = DefaultPredictor(cfg)
    calls = NormCalls(predictor.model)
    image = inputs()[0]["image"].permute(1, 2, 0).numpy().astype("uint8")
    got = predictor(image)
    assert calls.count == 0
    assert got["panoptic_seg"][0].shape == (96, 131)
    convs = [m for m in predictor.model.modules() if isinstance(m, ConvNormAct)]
    assert all(m._inference_weights is not None for m in convs if m.norm is not None)


def test_inference_dtype_bfloat16_runs_under_autocast_and_returns_float32():
    model = build(model_cfg(**{"MODEL.EFFICIENTPS.INFERENCE_DTYPE": "bfloat16"})).eval()
    dtypes = []
    model.sem_seg_head.register_forward_hook(lambda m, i, o: dtypes.append(o[0].dtype))
    with torch.no_grad():
        output = model(inputs())[0]
    assert dtypes == [torch.bfloat16]
    assert output["sem_seg"].dtype == torch.float32
    assert output["instances"].pred_mask_logits.dtype == torch.float32
    assert output["instances"].pred_boxes.tensor.dtype == torch.float32
    plain = copy.deepcopy(model)
    plain.inference_dtype = torch.float32
    with torch.no_grad():
        reference = plain(inputs())[0]
    # bf16 keeps 8 bits of mantissa: close, not equal.
    difference = (output["sem_seg"] - reference["sem_seg"]).abs().mean()
    assert 0 < difference < 0.05 * reference["sem_seg"].abs().mean()


def test_unknown_inference_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="INFERENCE_DTYPE='half'"):
        build(model_cfg(**{"MODEL.EFFICIENTPS.INFERENCE_DTYPE": "half"}))


def test_inference_api_as_detectron2s_models_offer_it():
    """inference(batched_inputs, detected_instances=None, do_postprocess=True): the forward's
    outputs; unpostprocessed logits at the input size; masks for given boxes."""
    model = build(model_cfg()).eval()
    height, width = 96, 131
    with torch.no_grad():
        through_forward = model(inputs(height, width))[0]
        raw = model.inference(inputs(height, width), do_postprocess=False)[0]
        detections = raw["instances"]
        given = detections[detections.scores.argsort(descending=True)[:3]]
        boxes_only = given.__class__(given.image_size)
        boxes_only.pred_boxes, boxes_only.pred_classes = given.pred_boxes, given.pred_classes
        masked = model.inference(inputs(height, width), [boxes_only], do_postprocess=False)[0]
    assert set(through_forward) == {"sem_seg", "instances", "panoptic_seg"}
    assert set(raw) == {"sem_seg", "instances"}
    # The input is its own output size: unpostprocessed equals postprocessed (no padding left).
    assert raw["sem_seg"].shape[-2:] == (height, width)
    torch.testing.assert_close(raw["sem_seg"], through_forward["sem_seg"])
    assert len(detections) == len(through_forward["instances"]) > 3
    # Given boxes: the detector is skipped, the mask head runs on exactly those boxes.
    assert torch.equal(masked["instances"].pred_boxes.tensor, given.pred_boxes.tensor)
    torch.testing.assert_close(masked["instances"].pred_mask_logits, given.pred_mask_logits)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().inference(inputs(height, width))
