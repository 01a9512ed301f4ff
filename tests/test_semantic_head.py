"""EfficientPS semantic head (LSFE, DPC, MC) and the hardest-pixel loss."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head
from torch.nn import functional as F

from efficientps.modeling.heads import DPC, EfficientPSSemSegHead, hard_pixel_cross_entropy

from .helpers import B5_CITYSCAPES_PARAMETERS, base_cfg, print_param_counts

PYRAMID = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}


def pyramid_features(height, width, batch=1):
    # Backbone maps for a padded image: each level is ceil(size / stride).
    return {
        name: torch.rand(batch, 256, -(-height // s.stride), -(-width // s.stride))
        for name, s in PYRAMID.items()
    }


def build_head(num_classes=19, **overrides):
    cfg = base_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    for key, value in overrides.items():
        cfg.MODEL.SEM_SEG_HEAD[key] = value
    return build_sem_seg_head(cfg, PYRAMID)


def test_registered_and_parameter_count_matches_the_spec():
    head = build_head(19)
    assert isinstance(head, EfficientPSSemSegHead)
    # Separable 3x3 convs with BN after both parts: 256->128: 2,304 + 512 + 32,768 + 256 =
    # 35,840; 128->128: 18,048; 256->256: 68,864.
    # LSFE 35,840 + 18,048; DPC 5 x 68,864 + 1x1 1280->128 with BN 164,096; MC 2 x 18,048;
    # classifier 512 x 19 + 19. Two of each module.
    expected = 2 * 53_888 + 2 * 508_416 + 2 * 36_096 + 9_747
    counts = print_param_counts({"semantic head (19 classes)": head})
    assert (
        counts["semantic head (19 classes)"] == expected == B5_CITYSCAPES_PARAMETERS["sem_seg_head"]
    )


@pytest.mark.parametrize("size", [(224, 256), (256, 288)])
def test_logits_at_padded_input_size_in_train_and_eval(size):
    head = build_head(7)
    features = pyramid_features(*size, batch=2)
    head.eval()
    with torch.no_grad():
        logits, losses = head(features)
    assert logits.shape == (2, 7, *size) and losses == {}
    head.train()
    targets = torch.randint(0, 7, (2, *size))
    logits, losses = head(features, targets)
    assert logits.shape == (2, 7, *size)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])


def test_odd_feature_sizes_are_aligned():
    # Feature maps of an unpadded odd image (e.g. 200x249): levels are not exact halves.
    head = build_head(5).eval()
    features = {
        "p2": torch.rand(1, 256, 50, 63),
        "p3": torch.rand(1, 256, 25, 32),
        "p4": torch.rand(1, 256, 13, 16),
        "p5": torch.rand(1, 256, 7, 8),
    }
    with torch.no_grad():
        logits, _ = head(features)
    assert logits.shape == (1, 5, 200, 252)


def test_gradients_reach_every_parameter():
    head = build_head(4).train()
    logits, losses = head(pyramid_features(128, 160), torch.randint(0, 4, (1, 128, 160)))
    losses["loss_sem_seg"].backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dpc_branch_4_reads_branch_3():
    dpc = DPC(8, 4, norm="", act="")
    seen = {}
    for i, branch in enumerate(dpc.branches):
        branch.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (inp[0], out)))
    dpc(torch.rand(1, 8, 30, 40))
    assert seen[4][0] is seen[3][1]
    for i in (1, 2, 3):
        assert seen[i][0] is seen[0][1]
    dilations = [b.depthwise.dilation for b in dpc.branches]
    assert dilations == [(1, 6), (1, 1), (6, 21), (18, 15), (6, 3)]
    assert [b.depthwise.padding for b in dpc.branches] == dilations  # 'same' for 3x3


def test_hard_pixel_loss_matches_hand_computation():
    # One image, 2 classes, 2x4 pixels, one ignored (loss 0). Per-pixel CE by hand, then the
    # mean of the hardest ceil(0.25 * 8) = 2 of the W*H = 8 pixels (the paper's 4/(W*H)).
    logits = torch.tensor(
        [
            [[0.0, 1.0, 2.0, 3.0], [0.5, -1.0, 4.0, 0.0]],
            [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 9.0]],
        ]
    )[None]
    targets = torch.tensor([[[0, 0, 1, 1], [1, 0, 0, 255]]])
    pixel_losses = []
    for y in range(2):
        for x in range(4):
            t = int(targets[0, y, x])
            if t == 255:
                pixel_losses.append(0.0)
                continue
            a, b = float(logits[0, 0, y, x]), float(logits[0, 1, y, x])
            lse = math.log(math.exp(a) + math.exp(b))
            pixel_losses.append(lse - (a if t == 0 else b))
    # The two hardest: (0, 3) logits (3, 0) target 1 and (1, 1) logits (-1, 2) target 0, both
    # 3 + log(1 + e^-3) = 3.0486.
    hardest = sorted(pixel_losses, reverse=True)[:2]
    assert hardest == pytest.approx([3 + math.log(1 + math.exp(-3))] * 2, rel=1e-9)
    loss = hard_pixel_cross_entropy(logits, targets, ignore_index=255, fraction=0.25)
    assert loss.item() == pytest.approx(sum(hardest) / 2, rel=1e-6)
    every = hard_pixel_cross_entropy(logits, targets, ignore_index=255, fraction=1.0)
    assert every.item() == pytest.approx(sum(pixel_losses) / 8, rel=1e-6)


def test_hard_pixel_loss_ranks_per_image_or_over_the_batch():
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 0] = 5.0  # image 0 is confidently class 0
    targets = torch.full((2, 4, 4), 255)
    targets[0] = 0
    targets[0, 0, 0] = 2  # one hard pixel in image 0; image 1 is all ignored (losses 0)
    per_pixel = F.cross_entropy(logits[:1], targets[:1], reduction="none").flatten()
    top4 = per_pixel.topk(4).values  # ceil(0.25 * 16) per image
    loss = hard_pixel_cross_entropy(logits, targets, fraction=0.25)
    assert loss.item() == pytest.approx((top4.mean().item() + 0.0) / 2, rel=1e-6)
    # Batch ranking: the top ceil(0.25 * 32) = 8 of all 32 pixels, all from image 0.
    batch = hard_pixel_cross_entropy(logits, targets, fraction=0.25, ranking="batch")
    assert batch.item() == pytest.approx(per_pixel.topk(8).values.mean().item(), rel=1e-6)
    empty = hard_pixel_cross_entropy(logits.requires_grad_(), torch.full((2, 4, 4), 255))
    assert empty.item() == 0.0
    empty.backward()  # still differentiable: DDP needs every parameter in the graph
    with pytest.raises(ValueError, match="fraction"):
        hard_pixel_cross_entropy(logits, targets, fraction=0.0)
    with pytest.raises(ValueError, match="ranking"):
        hard_pixel_cross_entropy(logits, targets, ranking="pixel")


def test_hard_pixel_count_comes_from_each_images_own_size_not_the_padded_batch():
    # Image 0 is 2x4 inside the 4x4 batch tensor (its lower half is padding, ignored); image 1
    # fills it. The paper's k = ceil(0.25 * W * H) of each image: 2 and 4 pixels.
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    targets[0, 2:] = 255
    per_pixel = F.cross_entropy(logits, targets, ignore_index=255, reduction="none")
    image0 = per_pixel[0, :2].flatten().topk(2).values.sum() / 2
    image1 = per_pixel[1].flatten().topk(4).values.sum() / 4
    sizes = [(2, 4), (4, 4)]
    loss = hard_pixel_cross_entropy(logits, targets, fraction=0.25, image_sizes=sizes)
    assert loss.item() == pytest.approx(((image0 + image1) / 2).item(), rel=1e-6)
    # Counting the padding, image 0 would average its top 4 (2 of them padding zeros or easy).
    padded = hard_pixel_cross_entropy(logits, targets, fraction=0.25)
    assert padded.item() != pytest.approx(loss.item(), rel=1e-3)
    # Batch ranking: k = ceil(0.25 * (8 + 16)) = 6 over all pixels.
    batch = hard_pixel_cross_entropy(logits, targets, ranking="batch", image_sizes=sizes)
    assert batch.item() == pytest.approx((per_pixel.flatten().topk(6).values.sum() / 6).item())


@pytest.mark.parametrize("size", [(256, 512), (224, 288), (200, 330)])
def test_classifier_without_the_concat_equals_the_concat_classifier(size):
    # The paper's head: cat([l4, up(l8), up(d16), up(d32)]) (512 ch at 1/4) -> 1x1 classifier.
    head = build_head(19).eval()
    torch.nn.init.normal_(head.predictor.bias)
    levels = [torch.randn(1, 128, -(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]
    target = levels[0].shape[-2:]
    upsampled = [levels[0]] + [
        F.interpolate(x, size=target, mode="bilinear", align_corners=False) for x in levels[1:]
    ]
    with torch.no_grad():
        expected = head.predictor(torch.cat(upsampled, dim=1))
        actual = head._predict_concat(levels)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0)
