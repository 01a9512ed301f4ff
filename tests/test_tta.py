"""Test-time augmentation: one scale without flip is the plain model; flips and scales run."""

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from efficientps import add_efficientps_config
from efficientps.modeling.meta_arch import EfficientPSWithTTA

from .helpers import CONFIGS


def demo_cfg(**aug):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "demo" / "efficientps_synthetic_cpu.yaml"))
    cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = [0, 1, 2, 3, 4]
    cfg.MODEL.EFFICIENTPS.THING_CHANNELS = [5, 6, 7]
    # Random weights score every class low: keep all detections so the instance path runs.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.TEST.AUG.MIN_SIZES = aug.get("min_sizes", (64,))
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = aug.get("flip", False)
    return cfg


def inputs():
    image = torch.randint(0, 256, (3, 64, 128), generator=torch.Generator().manual_seed(0))
    return [{"image": image.float(), "height": 64, "width": 128}]


def test_single_scale_without_flip_equals_the_plain_model():
    cfg = demo_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        plain = model(inputs())[0]
        tta = EfficientPSWithTTA(cfg, model)(inputs())[0]
    assert len(plain["instances"]) > 0
    torch.testing.assert_close(tta["sem_seg"], plain["sem_seg"])
    torch.testing.assert_close(
        tta["instances"].pred_mask_logits, plain["instances"].pred_mask_logits
    )
    assert torch.equal(tta["panoptic_seg"][0], plain["panoptic_seg"][0])


def test_multi_scale_and_flip_average_back_to_the_input_size():
    cfg = demo_cfg(min_sizes=(48, 64, 96), flip=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = EfficientPSWithTTA(cfg, model)(inputs())[0]
    panoptic, segments = out["panoptic_seg"]
    assert out["sem_seg"].shape == (8, 64, 128) and panoptic.shape == (64, 128)
    assert out["instances"].image_size == (64, 128)
    assert len(out["instances"]) <= 20
    assert set(panoptic.unique().tolist()) - {0} == {s["id"] for s in segments}


def test_flip_averages_the_semantic_logits_of_the_image_and_its_flipped_back_mirror():
    cfg = demo_cfg(flip=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = inputs()
    mirrored = [dict(image[0], image=image[0]["image"].flip(-1))]
    with torch.no_grad():
        straight = model(image)[0]["sem_seg"]
        flipped_back = model(mirrored)[0]["sem_seg"].flip(-1)
        tta = EfficientPSWithTTA(cfg, model)(image)[0]
    assert not torch.allclose(straight, flipped_back)  # random weights: not flip-invariant
    torch.testing.assert_close(tta["sem_seg"], (straight + flipped_back) / 2)
