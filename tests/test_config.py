"""Config keys and every file under configs/ merge into a detectron2 config."""

from pathlib import Path

import pytest
from detectron2.config import get_cfg

from efficientps import add_efficientps_config

from .helpers import flat_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_add_efficientps_config_only_adds_keys_and_is_idempotent():
    stock = flat_config(get_cfg())
    cfg = get_cfg()
    add_efficientps_config(cfg)
    ours = flat_config(cfg)
    # detectron2's own defaults are untouched: our values live in the YAML configs.
    assert {key: ours[key] for key in stock} == stock
    added = set(ours) - set(stock)
    assert added and all(k.startswith(("MODEL.", "INPUT.", "NUMERICS.")) for k in added)
    # A second call (e.g. by a project that also registers us) keeps what the user set.
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet-b0"
    cfg.INPUT.SCALE_RANGE = [0.75, 1.25]
    add_efficientps_config(cfg)
    assert cfg.MODEL.EFFICIENTNET.NAME == "efficientnet-b0"
    assert cfg.INPUT.SCALE_RANGE == [0.75, 1.25]
    assert set(flat_config(cfg)) == set(ours)


def test_there_are_configs():
    assert CONFIG_DIR / "Base-EfficientPS.yaml" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_file_merges_and_freezes(path):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.freeze()
    assert cfg.MODEL.WEIGHTS == "" or Path(cfg.MODEL.WEIGHTS).suffix in {".pth", ".pkl"}


def load(relative):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / relative))
    return cfg


CITYSCAPES = "Cityscapes-PanopticSegmentation/efficientps_b5_2wayfpn_bs16_1024x2048.yaml"
CITYSCAPES_TRAIN_IMAGES = 2975


def test_cityscapes_schedule_is_the_authors_160_epochs_then_half_as_many():
    cfg = load(CITYSCAPES)
    per_epoch = -(-CITYSCAPES_TRAIN_IMAGES // cfg.SOLVER.IMS_PER_BATCH)  # padded last batch
    assert (cfg.SOLVER.IMS_PER_BATCH, per_epoch) == (16, 186)
    assert cfg.SOLVER.MAX_ITER == 160 * per_epoch == 29760
    assert tuple(cfg.SOLVER.STEPS) == (120 * per_epoch, 144 * per_epoch)
    stage2 = load(CITYSCAPES.replace(".yaml", "_stage2.yaml"))
    assert stage2.SOLVER.MAX_ITER == 80 * per_epoch
    assert tuple(stage2.SOLVER.STEPS) == (60 * per_epoch, 72 * per_epoch)
    assert stage2.SOLVER.BASE_LR == cfg.SOLVER.BASE_LR == 0.07


@pytest.mark.parametrize(
    "relative",
    [
        CITYSCAPES,
        "KITTI-PanopticSegmentation/efficientps_b5_2wayfpn_bs16_384x1280.yaml",
        "MapillaryVistas-PanopticSegmentation/efficientps_b5_2wayfpn_bs16_v1.2_1024x1024.yaml",
    ],
)
def test_paper_configs_carry_the_paper_and_authors_recipe(relative):
    cfg = load(relative)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (
        True, "full_model", 35.0, 2.0
    )  # fmt: skip
    # Synchronised iABN wherever the paper has iABN; no norm in the RPN and box head.
    norms = (cfg.MODEL.EFFICIENTNET.NORM, cfg.MODEL.TWO_WAY_FPN.NORM,
             cfg.MODEL.SEM_SEG_HEAD.NORM, cfg.MODEL.ROI_MASK_HEAD.NORM)  # fmt: skip
    assert norms == ("SyncBN",) * 4 and cfg.MODEL.EFFICIENTPS.INPLACE_ABN
    assert (cfg.MODEL.RPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM) == ("", "")
    assert cfg.MODEL.EFFICIENTPS.FUSION_PIXEL_RULE == "argmax"
    assert cfg.MODEL.EFFICIENTPS.FUSION_MASK_LOGIT_SCALE == 1.0
    assert cfg.MODEL.SEM_SEG_HEAD.HARD_PIXEL_FRACTION == 0.25
    assert cfg.MODEL.SEM_SEG_HEAD.HARD_PIXEL_RANKING == "image"
    assert cfg.INPUT.CROWD_IN_SEMANTIC is True
    assert cfg.MODEL.RPN.SMOOTH_L1_BETA == pytest.approx(1 / 9, abs=1e-4)
    assert cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 1.0
    assert cfg.MODEL.EFFICIENTNET.DROP_CONNECT_RATE == 0.0
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == 2
    assert cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO == 2
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (500, pytest.approx(1 / 3, 1e-5))
