"""Shared builders for the tests: stock detectron2 configs and hand-made ground truth."""

import importlib.util
import uuid
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from fvcore.nn import parameter_count

from efficientps import add_efficientps_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TRAIN_NET = str(REPO / "train_net.py")
BASE_CONFIG = str(CONFIGS / "Base-EfficientPS.yaml")
DEMO_CONFIG = str(CONFIGS / "demo" / "efficientps_synthetic_cpu.yaml")


def base_cfg():
    """Base-EfficientPS.yaml with ``add_efficientps_config``; not frozen."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def registered_synthetic_train_split(root, prefix, count, seed, split="train"):
    """``count`` synthetic 64x128 images of ``split`` under ``root``, registered under a new
    dataset name (returned)."""
    from efficientps.data import synthetic
    from efficientps.data.datasets import register_synthetic_panoptic

    synthetic.generate_split(str(root), split, count, seed=seed, size=(64, 128), progress=False)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register_synthetic_panoptic(name, str(root), split)
    return name


def random_demo_checkpoint(root, prefix, opts, count, seed):
    """A registered synthetic val split of ``count`` images under ``root``/synthetic and a
    checkpoint of the demo model (``opts`` applied) with randomised BatchNorm statistics.

    Returns (the val image paths, ``opts`` + DATASETS.TRAIN/TEST + MODEL.WEIGHTS).
    """
    from efficientps.demo import setup_cfg

    name = registered_synthetic_train_split(root / "synthetic", prefix, count, seed, "val")
    opts = [*opts, "DATASETS.TEST", f"('{name}',)", "DATASETS.TRAIN", f"('{name}',)"]
    torch.manual_seed(0)
    model = build_model(setup_cfg(DEMO_CONFIG, opts))
    randomise_batchnorm(model)
    weights = root / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    images = sorted((root / "synthetic" / "leftImg8bit" / "val" / "synth").glob("*.png"))
    return images, [*opts, "MODEL.WEIGHTS", str(weights)]


def flat_config(node, prefix=""):
    """{"MODEL.RPN.NMS_THRESH": value, ...}: every leaf of a config, by its full key."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stock_mask_rcnn_cfg():
    """detectron2's Mask R-CNN R50-FPN from get_cfg() (no model zoo), small enough for a CPU."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 500
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    return cfg


def drop_in_cfg(meta_architecture, backbone_name="build_efficientnet_2wayfpn_backbone"):
    """A stock detectron2 model (GeneralizedRCNN, PanopticFPN) with our backbone dropped in."""
    cfg = stock_mask_rcnn_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet-b0"
    cfg.MODEL.TWO_WAY_FPN.TOP_BLOCK = "maxpool"  # the stock RPN config wants p6
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    return cfg


def synthetic_instances(height, width, boxes=((10, 20, 110, 150),), classes=(3,)):
    """Instances with gt boxes, classes and box-shaped bit masks (x0, y0, x1, y1 pixels)."""
    gt = Instances((height, width))
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.tensor(classes, dtype=torch.int64)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    gt.gt_masks = BitMasks(masks)
    return gt


def small_cfg(fusion="paper"):
    """b0, Cityscapes classes (11 stuff channels 0..10, 8 things 11..18), small RPN budgets."""
    cfg = base_cfg()
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet-b0"
    cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = list(range(11))
    cfg.MODEL.EFFICIENTPS.THING_CHANNELS = list(range(11, 19))
    cfg.MODEL.EFFICIENTPS.FUSION = fusion
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    return cfg


def training_sample(height, width, boxes=((20, 30, 90, 120), (100, 40, 180, 150)), classes=(0, 5)):
    """A training input for small_cfg: random image, two box instances, their semantic map."""
    sem = torch.randint(0, 11, (height, width))
    gt = synthetic_instances(height, width, boxes, classes)
    for mask, c in zip(gt.gt_masks.tensor, gt.gt_classes):
        sem[mask] = 11 + int(c)
    return {"image": torch.rand(3, height, width) * 255, "sem_seg": sem, "instances": gt}


def randomise_batchnorm(model, seed=0):
    """Non-trivial running statistics and affine parameters, so folding them is a real test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def backbone_cfg(name="efficientnet-b0", **fpn):
    """The EfficientNet + 2-way FPN backbone of ``name``; TWO_WAY_FPN keys as keywords."""
    cfg = get_cfg()
    add_efficientps_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_efficientnet_2wayfpn_backbone"
    cfg.MODEL.EFFICIENTNET.NAME = name
    for key, value in fpn.items():
        cfg.MODEL.TWO_WAY_FPN[key] = value
    return cfg


def load_script(path):
    """A repository script (train_net.py, tools/*.py) as a module: they are not packaged."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_train_net():
    """The repository's train_net.py as a module."""
    return load_script(TRAIN_NET)


def small_inference_cfg(**overrides):
    """small_cfg with narrow heads and every detection kept (random weights score low)."""
    cfg = small_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.MODEL.TWO_WAY_FPN.OUT_CHANNELS = 64
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 128
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def build_randomised(cfg, seed=0):
    """build_model with a fixed seed and randomised BatchNorm statistics."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    randomise_batchnorm(model, seed)
    return model


# Exact parameter counts of the Cityscapes EfficientPS-B5 (19 classes, 8 things), pinned here
# once; the head tests derive theirs layer by layer and compare with these.
B5_CITYSCAPES_PARAMETERS = {
    "backbone": 24_620_400,
    "sem_seg_head": 1_206_547,
    "proposal_generator": 593_935,
    "roi_heads": 14_477_617,
}


def count_parameters(module):
    """Number of parameters of ``module`` (fvcore's parameter_count)."""
    return parameter_count(module)[""]


def print_param_counts(modules):
    """Print and return {name: parameter count} for a dict of modules (shown with pytest -s)."""
    counts = {name: count_parameters(m) for name, m in modules.items()}
    for name, n in counts.items():
        print(f"{name:40s} {n:>12,d}  ({n / 1e6:.3f} M)")
    return counts


def kept_bytes(run):
    """(run(), bytes of the storages autograd keeps for backward while run() builds its graph),
    each storage counted once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = run()
    return output, sum(storages.values())
