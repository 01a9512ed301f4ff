"""ROIAlign as one ``embedding_bag`` call: torchvision's numbers, a much faster CPU backward.

torchvision's CPU ``roi_align`` backward is a single-threaded scalar loop; with 512 ROIs of 256
channels it takes ~0.6-0.9 s per FPN level here, more than the whole backbone backward of the
CPU demo. Every output bin of ROIAlign is a weighted sum of feature-map pixels (bilinear corners
of its sampling points), so with the features in channels-last rows it is exactly
``F.embedding_bag(indices, rows, per_sample_weights, mode="sum")``, whose forward and backward
are vectorised and threaded. Sampling points, clamping and the adaptive sampling ratio follow
torchvision's kernel, so outputs agree to float rounding (tested).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align as torchvision_roi_align

from .layers import capturing_a_graph


def _axis_samples(start, end, bins, grid, size, max_grid):
    """Bilinear taps of one axis: indices and weights shaped (R, bins, max_grid * 2).

    ``grid`` (R,) is each ROI's number of sampling points per bin on this axis (callers group
    ROIs so that it equals ``max_grid``); entries past it get weight 0, which is how a ROI of
    zero size (grid 0) pools to zeros as in torchvision.
    """
    dtype = start.dtype
    bin_size = (end - start) / bins
    bin_index = torch.arange(bins, device=start.device, dtype=dtype)
    sample_index = torch.arange(max_grid, device=start.device, dtype=dtype)
    grid_f = grid.to(dtype).clamp(min=1)
    # torchvision: start + p * bin_size + (i + 0.5) * bin_size / grid
    coord = (
        start[:, None, None]
        + bin_index[None, :, None] * bin_size[:, None, None]
        + (sample_index[None, None, :] + 0.5) * (bin_size / grid_f)[:, None, None]
    )
    used = sample_index[None, None, :] < grid.to(dtype)[:, None, None]
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    coord = torch.where(at_edge, low, coord)
    high = torch.where(at_edge, low, low + 1)
    frac = coord - low
    weights = torch.stack([1 - frac, frac], dim=-1) * (used & inside)[..., None]
    indices = torch.stack([low, high], dim=-1).long()
    rois = start.shape[0]
    return indices.reshape(rois, bins, -1), weights.reshape(rois, bins, -1)


def roi_align_embedding_bag(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Same contract as ``torchvision.ops.roi_align`` with rois (R, 5) = (batch index, box)."""
    out_h, out_w = output_size
    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)
    # Box coordinates stay in float32 (or float64) whatever the features' dtype: float16 rounds
    # them to 1 px above x = 1024, bfloat16 to 8-16 px. Only the tap weights take the features'
    # dtype, as embedding_bag needs.
    rois = rois.to(torch.promote_types(rois.dtype, torch.float32))
    offset = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x1 - x0, y1 - y0
    if not aligned:  # torchvision's legacy mode forces ROIs to be at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, device=rois.device, dtype=torch.long)
        grid_w = grid_h
    else:  # adaptive: ceil(roi size / bins) sampling points per bin, per ROI
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)
    image = rois[:, 0].long()

    # ROIs with the same sampling grid share a tap count; each group is laid out exactly (no
    # padding to the largest ROI's grid), and all bags go to one embedding_bag call.
    stride = int(grid_w.max()) + 1
    group_key = grid_h * stride + grid_w
    order, indices, weights, bag_sizes = [], [], [], []
    for key in torch.unique(group_key).tolist():
        members = torch.nonzero(group_key == key).flatten()
        taps_h, taps_w = max(key // stride, 1), max(key % stride, 1)
        rows, row_w = _axis_samples(
            y0[members], y0[members] + roi_h[members], out_h, grid_h[members], height, taps_h
        )
        cols, col_w = _axis_samples(
            x0[members], x0[members] + roi_w[members], out_w, grid_w[members], width, taps_w
        )
        # (R, out_h, out_w, taps_h, taps_w): flat row of (image, y, x) in channels-last rows.
        flat = image[members, None, None, None, None] * height + rows[:, :, None, :, None]
        flat = flat * width + cols[:, None, :, None, :]
        weight = row_w[:, :, None, :, None] * col_w[:, None, :, None, :]
        weight = weight / count[members, None, None, None, None]
        order.append(members)
        indices.append(flat.reshape(-1))
        weights.append(weight.reshape(-1))
        bags = len(members) * out_h * out_w
        bag_sizes.append(torch.full((bags,), 4 * taps_h * taps_w, device=rois.device))
    bag_sizes = torch.cat(bag_sizes)
    offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    weights = torch.cat(weights).to(features.dtype)
    pooled = F.embedding_bag(
        torch.cat(indices), table, offsets, per_sample_weights=weights, mode="sum"
    )
    output = pooled.new_empty(num_rois, out_h, out_w, channels)
    output[torch.cat(order)] = pooled.view(-1, out_h, out_w, channels)
    return output.permute(0, 3, 1, 2).contiguous()


def roi_align_float32_boxes(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """torchvision's ``roi_align`` without rounding the boxes to the features' dtype.

    Its kernel wants boxes in the features' dtype (detectron2's ROIAlign casts them): float16
    features get float32 pooling of float32 boxes, the result cast back, as torchvision's own
    autocast wrapper does under AMP.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        pooled = torchvision_roi_align(
            features.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned
        )
        return pooled.to(features.dtype)
    return torchvision_roi_align(
        features, rois.to(features.dtype), output_size, spatial_scale, sampling_ratio, aligned
    )


class FastCPUROIAlign(nn.Module):
    """Drop-in for ``detectron2.layers.ROIAlign``: the embedding-bag path on CPU, torchvision's
    kernel elsewhere (its CUDA kernel is already fast)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features, rois):
        # Not while a graph is captured: its ROI grouping is data-dependent Python, while
        # torchvision's op exports as one ONNX RoiAlign.
        if features.device.type == "cpu" and not capturing_a_graph():
            return roi_align_embedding_bag(
                features,
                rois,
                self.output_size,
                self.spatial_scale,
                self.sampling_ratio,
                self.aligned,
            )
        return roi_align_float32_boxes(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def use_fast_cpu_roi_align(pooler):
    """Swap a detectron2 ``ROIPooler``'s ROIAlign levels for ``FastCPUROIAlign`` in place."""
    if pooler is None:
        return pooler
    levels = []
    for level in pooler.level_poolers:
        if type(level).__name__ != "ROIAlign":  # ROIPool / rotated: keep detectron2's
            return pooler
        levels.append(
            FastCPUROIAlign(
                level.output_size, level.spatial_scale, level.sampling_ratio, level.aligned
            )
        )
    pooler.level_poolers = nn.ModuleList(levels)
    return pooler
