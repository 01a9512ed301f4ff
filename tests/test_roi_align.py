"""The embedding-bag ROIAlign gives torchvision's outputs and gradients."""

import pytest
import torch
from torchvision.ops import roi_align

from efficientps.modeling.roi_align import FastCPUROIAlign, roi_align_embedding_bag


def random_rois(num, height, width, scale, generator):
    """Boxes in image pixels, some partly outside the feature map, a few degenerate."""
    image = torch.randint(0, 2, (num, 1), generator=generator).float()
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height]) / scale * 1.1 - 6
    size = torch.rand(num, 2, generator=generator) * 40 / scale
    size[:3] = torch.tensor([[0.0, 0.0], [0.3, 5.0], [1e-3, 1e-3]])
    return torch.cat([image, xy, xy + size], dim=1)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (5, 3)])
def test_matches_torchvision_forward_and_backward(sampling_ratio, aligned, output_size):
    generator = torch.Generator().manual_seed(0)
    scale = 0.25
    features = torch.randn(2, 6, 13, 21, generator=generator, dtype=torch.float64)
    rois = random_rois(40, 13, 21, scale, generator).double()
    ours_in = features.clone().requires_grad_()
    ref_in = features.clone().requires_grad_()

    ours = roi_align_embedding_bag(ours_in, rois, output_size, scale, sampling_ratio, aligned)
    ref = roi_align(ref_in, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)

    upstream = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    ours.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-10)


def test_no_rois_and_float32():
    features = torch.randn(1, 4, 8, 8)
    empty = FastCPUROIAlign((7, 7), 0.5, 2)(features, torch.zeros(0, 5))
    assert empty.shape == (0, 4, 7, 7)
    rois = torch.tensor([[0.0, 1.0, 2.0, 9.0, 12.0]])
    torch.testing.assert_close(
        FastCPUROIAlign((7, 7), 0.5, 0)(features, rois), roi_align(features, rois, 7, 0.5, 0, True)
    )


def test_roi_heads_use_it_and_it_can_be_switched_off():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_roi_heads

    from .helpers import base_cfg

    cfg = base_cfg()
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
    heads = build_roi_heads(cfg, shapes)
    assert isinstance(heads.box_pooler.level_poolers[0], FastCPUROIAlign)
    assert isinstance(heads.mask_pooler.level_poolers[0], FastCPUROIAlign)
    cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN = False
    heads = build_roi_heads(cfg, shapes)
    assert not isinstance(heads.box_pooler.level_poolers[0], FastCPUROIAlign)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["embedding_bag", "torchvision"])
def test_boxes_are_not_rounded_to_the_features_dtype(dtype, path):
    """Under AMP (or INFERENCE_DTYPE float16/bfloat16) the features are low precision; boxes at
    x > 1024 would move by 1 px (float16) or 8-16 px (bfloat16) if cast to their dtype."""
    from efficientps.modeling.roi_align import roi_align_float32_boxes

    pool = roi_align_embedding_bag if path == "embedding_bag" else roi_align_float32_boxes
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 4, 40, 400, generator=generator).to(dtype)  # stride 4: 1600 px
    x0 = torch.tensor([1031.3, 1217.7, 1499.1])
    rois = torch.stack([torch.zeros(3), x0, x0 * 0 + 17.3, x0 + 45.6, x0 * 0 + 83.9], dim=1)
    assert not torch.equal(rois.to(dtype).float(), rois)  # these boxes do not survive a cast
    got = pool(features, rois, (7, 7), 0.25, 2, True)
    assert got.dtype == dtype
    expected = roi_align(features.float(), rois, (7, 7), 0.25, 2, True)
    rounded = roi_align(features.float(), rois.to(dtype).float(), (7, 7), 0.25, 2, True)
    tolerance = 2 * torch.finfo(dtype).eps * expected.abs().max()
    assert (got.float() - expected).abs().max() <= tolerance
    assert (rounded - expected).abs().max() > 10 * tolerance  # the test can tell them apart
