"""The learning benchmark's peer: detectron2's Panoptic FPN behind our data and evaluator."""

import sys

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps.demo import setup_cfg

from .helpers import REPO, training_sample

sys.path.insert(0, str(REPO / "benchmarks"))
import panoptic_fpn_peer  # noqa: E402,F401  (registers PanopticFPNPeer)

PEER_CONFIG = str(REPO / "benchmarks" / "configs" / "panoptic_fpn_R_50_demo.yaml")
STUFF, THINGS = list(range(11)), list(range(11, 19))


def peer():
    cfg = setup_cfg(PEER_CONFIG, [
        "MODEL.EFFICIENTPS.STUFF_CHANNELS", str(STUFF), "MODEL.EFFICIENTPS.THING_CHANNELS",
        str(THINGS), "MODEL.ROI_HEADS.NUM_CLASSES", "8", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0", "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "12",
    ])  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg)


def test_semantic_targets_merge_the_things_into_class_zero():
    model = peer()
    channels = torch.tensor([0, 10, 11, 18, 255])
    # Stuff channel k -> 1 + k; every thing channel -> 0; ignore stays.
    assert model.merged_class[channels].tolist() == [1, 11, 0, 0, 255]
    with EventStorage():
        losses = model.train()([training_sample(128, 256)])
    assert {"loss_sem_seg", "loss_cls", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_outputs_speak_semantic_channels():
    model = peer().eval()
    with torch.no_grad():
        output = model([{"image": torch.rand(3, 128, 256) * 255}])[0]
    ids, segments = output["panoptic_seg"]
    assert output["sem_seg"].shape == (19, 128, 256)
    semantic = output["sem_seg"].argmax(0)
    for segment in segments:
        channels = THINGS if segment["isthing"] else STUFF
        assert segment["category_id"] in channels
        # The semantic map reads each segment's class where the segment is.
        assert bool((semantic[ids == segment["id"]] == segment["category_id"]).all())
    assert any(s["isthing"] for s in segments)
