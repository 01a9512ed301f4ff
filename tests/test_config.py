"""Config keys and every file under configs/ merge into a detectron2 config."""

from pathlib import Path

import pytest
from detectron2.config import get_cfg

from efficientps import add_efficientps_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_add_efficientps_config_adds_keys_once():
    cfg = get_cfg()
    add_efficientps_config(cfg)
    assert cfg.MODEL.EFFICIENTNET.NAME == "efficientnet-b5"
    assert cfg.MODEL.EFFICIENTNET.SE is False
    assert cfg.MODEL.TWO_WAY_FPN.SEPARABLE is True
    assert cfg.MODEL.SEM_SEG_HEAD.HARD_PIXEL_FRACTION == 0.25
    assert cfg.MODEL.EFFICIENTPS.FUSION == "paper"
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet-b0"
    add_efficientps_config(cfg)  # a second call keeps what was set
    assert cfg.MODEL.EFFICIENTNET.NAME == "efficientnet-b0"


def test_there_are_configs():
    assert CONFIG_DIR / "Base-EfficientPS.yaml" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_file_merges_and_freezes(path):
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.freeze()
    assert cfg.MODEL.WEIGHTS == "" or Path(cfg.MODEL.WEIGHTS).suffix in {".pth", ".pkl"}
