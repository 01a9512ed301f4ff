"""Wrong configs and data fail with an error that names the key or the file, before any work."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from efficientps.data import EfficientPSPanopticMapper
from efficientps.data.datasets import DatasetFormatError

from .helpers import DEMO_CONFIG, registered_synthetic_train_split, small_cfg

# (key, bad value, what the message must say): each builds the model and must fail.
BAD_MODEL_KEYS = [
    ("MODEL.EFFICIENTPS.FUSION", "average", r"MODEL.EFFICIENTPS.FUSION='average'.*paper"),
    ("MODEL.EFFICIENTPS.FUSION_PIXEL_RULE", "max", r"FUSION_PIXEL_RULE='max'.*argmax"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", 18, r"MODEL.SEM_SEG_HEAD.NUM_CLASSES.*18 classes.*19"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", 7, r"MODEL.ROI_HEADS.NUM_CLASSES.*7 thing.*8"),
    ("MODEL.SEM_SEG_HEAD.DPC_DILATIONS", [[1, 6], [1, 1]], r"DPC_DILATIONS.*expected 5"),
    ("MODEL.EFFICIENTNET.NORM", "BatchNorm", r"MODEL.EFFICIENTNET.NORM='BatchNorm'"),
    ("MODEL.EFFICIENTNET.ACTIVATION", "gelu", r"MODEL.EFFICIENTNET.ACTIVATION='gelu'"),
    ("MODEL.TWO_WAY_FPN.NORM", "LN", r"MODEL.TWO_WAY_FPN.NORM='LN'"),
    ("MODEL.SEM_SEG_HEAD.ACTIVATION", "elu", r"MODEL.SEM_SEG_HEAD.ACTIVATION='elu'"),
    ("MODEL.RPN.ACTIVATION", "tanh", r"MODEL.RPN.ACTIVATION='tanh'"),
    ("MODEL.ROI_BOX_HEAD.NORM", "IN", r"MODEL.ROI_BOX_HEAD.NORM='IN'"),
    ("MODEL.ROI_MASK_HEAD.DECONV_ACTIVATION", "prelu", r"DECONV_ACTIVATION='prelu'"),
    # Class tables: a channel both stuff and thing; a gap (channel 5 nowhere).
    ("MODEL.EFFICIENTPS.THING_CHANNELS", list(range(10, 18)), r"THING_CHANNELS.*stuff and thing"),
    (
        "MODEL.EFFICIENTPS.STUFF_CHANNELS",
        [0, 1, 2, 3, 4, 6, 7, 8, 9, 10],
        r"STUFF_CHANNELS.*0..C-1",
    ),
]


@pytest.mark.parametrize(
    "key, value, message", BAD_MODEL_KEYS, ids=[k for k, _, _ in BAD_MODEL_KEYS]
)
def test_bad_model_config_names_the_key(key, value, message):
    cfg = small_cfg()
    cfg.merge_from_list([key, str(value) if isinstance(value, list) else value])
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_bad_random_scale_range_names_the_key():
    cfg = small_cfg()
    cfg.merge_from_file(DEMO_CONFIG)
    for scale_range in ([2.0, 0.5], [0.0, 1.0], [0.5]):
        cfg.INPUT.SCALE_RANGE = scale_range
        with pytest.raises(ValueError, match=r"INPUT.SCALE_RANGE=.*0 < min <= max"):
            EfficientPSPanopticMapper(cfg, is_train=True)


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return registered_synthetic_train_split(root, "synth_bad", count=2, seed=3)


def test_dataset_ignore_label_must_match_the_config(synthetic_split):
    cfg = small_cfg()
    cfg.merge_from_file(DEMO_CONFIG)
    cfg.DATASETS.TRAIN = (synthetic_split,)
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 254
    ignore = MetadataCatalog.get(synthetic_split).ignore_label
    with pytest.raises(ValueError, match=f"ignore label {ignore}.*IGNORE_VALUE is 254"):
        EfficientPSPanopticMapper(cfg, is_train=True)


def test_panoptic_png_of_another_size_names_both_files(synthetic_split, tmp_path):
    cfg = small_cfg()
    cfg.merge_from_file(DEMO_CONFIG)
    cfg.DATASETS.TRAIN = (synthetic_split,)
    mapper = EfficientPSPanopticMapper(cfg, is_train=True)
    record = dict(DatasetCatalog.get(synthetic_split)[0])
    small = tmp_path / "half_size.png"
    Image.open(record["pan_seg_file_name"]).resize((64, 32)).save(small)
    record["pan_seg_file_name"] = str(small)
    with pytest.raises(DatasetFormatError, match=r"half_size.png is 64x32 but its image .* 128x64"):
        mapper(record)
