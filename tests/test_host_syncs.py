"""Host reads that would stall a GPU: none per iABN layer, none per detection in the fusion."""

import torch

from efficientps.engine.host_syncs import SyncCounter
from efficientps.modeling import InPlaceABN, convert_to_inplace_abn, refresh_small_channels
from efficientps.modeling.meta_arch.mask_paste import BoxMaskLogits
from efficientps.modeling.meta_arch.panoptic_fusion import fuse_panoptic

from .test_inplace_abn import conv_stack


def test_the_counter_sees_the_reads_it_names():
    x = torch.randn(10)
    with SyncCounter() as counter:
        int(x[0] > 0), x.tolist(), x[x > 0], torch.nonzero(x), x.sum().item()
        y = x * 2 + 1  # device work only
    assert counter.total() == 5 and y.shape == (10,)
    assert [path.endswith("test_host_syncs.py") for path in counter.by_file()] == [True]


def iabn_layers(model):
    return [m for m in model.modules() if isinstance(m, InPlaceABN)]


def iabn_stack():
    model = conv_stack()
    assert convert_to_inplace_abn(model) == 4
    with torch.no_grad():
        iabn_layers(model)[1].weight[:2] = 1e-4  # channels kept from the input
    return model.train()


def test_iabn_training_reads_the_host_once_per_weight_change_for_all_layers():
    model = iabn_stack()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)  # small weights stay small
    x = torch.randn(2, 8, 16, 16)
    for step in range(3):
        with SyncCounter() as counter:
            refresh_small_channels(model)  # what EfficientPS.forward does first
            model(x).square().sum().backward()
        assert counter.total() == 1, (step, counter.calls)  # the refresh's one read
        optimizer.step()
        optimizer.zero_grad()
    refresh_small_channels(model)
    with SyncCounter() as counter:  # weights unchanged since the last read: nothing to read
        refresh_small_channels(model)
        model(x).sum().backward()
    assert counter.total() == 0
    assert iabn_layers(model)[1].small_channels().tolist() == [0, 1]


def random_detections(count, height=96, width=160, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width - 40.0, height - 40.0])
    boxes = torch.cat([xy, xy + 8 + 30 * torch.rand(count, 2, generator=generator)], 1)
    masks = torch.randn(count, 28, 28, generator=generator)
    scores = 0.5 + 0.5 * torch.rand(count, generator=generator)
    classes = torch.randint(0, 3, (count,), generator=generator)
    sem = torch.randn(7, height, width, generator=generator)
    return sem, BoxMaskLogits(masks, boxes, height, width), boxes, classes, scores


def fusion_syncs(count, pixel_rule):
    sem, masks, boxes, classes, scores = random_detections(count)
    with SyncCounter() as counter:
        _, segments = fuse_panoptic(
            sem, masks, boxes, classes, scores, stuff_channels=[0, 1, 2, 3],
            thing_channels=[4, 5, 6], stuff_area=10, pixel_rule=pixel_rule,
        )  # fmt: skip
    assert sum(s["isthing"] for s in segments) >= min(count, 3)  # instances were fused
    return counter.total()


def test_fusion_host_reads_do_not_grow_with_the_detections():
    for rule in ("argmax", "owner", "authors"):
        assert fusion_syncs(4, rule) == fusion_syncs(40, rule) <= 12, rule
