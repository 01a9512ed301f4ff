"""FusionParams: the fusion's settings from the config, into metadata.json and back, one code."""

import json

import pytest
from detectron2.modeling import build_model

from efficientps.demo import setup_cfg
from efficientps.export import export_metadata
from efficientps_runtime import ModelFolderError, PanopticFusion
from efficientps_runtime.fusion_params import FusionParams, FusionSettingError
from efficientps_runtime.session import check_metadata

from .helpers import DEMO_CONFIG, registered_synthetic_train_split

SETTINGS = [
    "MODEL.EFFICIENTPS.FUSION_SCORE_THRESH", "0.3", "MODEL.EFFICIENTPS.FUSION_OVERLAP_THRESH",
    "0.7", "MODEL.EFFICIENTPS.FUSION_STUFF_AREA", "100",
    "MODEL.EFFICIENTPS.FUSION_STUFF_AREA_REFERENCE", "(64, 128)",
    "MODEL.EFFICIENTPS.FUSION_MASK_LOGIT_SCALE", "4.0",
    "MODEL.EFFICIENTPS.FUSION_PIXEL_RULE", "owner", "MODEL.EFFICIENTPS.FUSION", "learned",
]  # fmt: skip


def test_settings_travel_from_config_through_metadata_to_the_runtime(tmp_path):
    name = registered_synthetic_train_split(tmp_path, "synth_params", 1, seed=1, split="val")
    cfg = setup_cfg(DEMO_CONFIG, [*SETTINGS, "DATASETS.TEST", f"('{name}',)"])
    model = build_model(cfg)
    expected = FusionParams(0.3, 0.7, 100, (64, 128), 4.0, "owner")
    assert model.panoptic_fusion.params == expected == FusionParams.from_config(cfg)
    metadata = json.loads(json.dumps(export_metadata(cfg, model)))  # as written and read
    check_metadata(metadata)
    runtime = PanopticFusion.from_metadata(metadata)
    assert runtime.params == expected
    quality = model.panoptic_fusion.quality
    assert runtime.quality_weights[0].tolist() == quality.feature_weights.detach().tolist()
    assert runtime.quality_weights[1].tolist() == quality.class_bias.detach().tolist()
    assert expected.stuff_area_at(128, 256) == 400
    metadata["fusion"]["overlap_thresh"] = True
    with pytest.raises(ModelFolderError, match="m.json: fusion.overlap_thresh is True"):
        check_metadata(metadata, "m.json")


def test_bad_settings_name_the_config_key_or_the_metadata_key():
    cfg = setup_cfg(DEMO_CONFIG, ["MODEL.EFFICIENTPS.FUSION_PIXEL_RULE", "max"])
    with pytest.raises(FusionSettingError, match=r"FUSION_PIXEL_RULE='max'; expected one of"):
        FusionParams.from_config(cfg)
    fusion = FusionParams().to_metadata()
    for key, value, message in (
        ("stuff_area_reference", [1], r"fusion.stuff_area_reference is \[1\]; expected \[h"),
        ("score_thresh", "0.5", "fusion.score_thresh is '0.5'; expected a number"),
        (
            "quality",
            {"feature_weights": [1, 0, 0, 0, 0], "class_bias": [0]},
            r'fusion.quality .* "class_bias": 2 numbers',
        ),
        ("quality", [1, 0, 0, 0, 0], r'fusion.quality .*"feature_weights": 5 numbers'),
        ("pixel_rule", None, "fusion.pixel_rule is None"),
    ):
        with pytest.raises(FusionSettingError, match=message):
            FusionParams.from_metadata(dict(fusion, **{key: value}), num_things=2)
