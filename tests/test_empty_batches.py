"""Training steps on batches without a single thing instance: the mask head gets 0 regions.

Common with 1-2 crops per GPU (KITTI, Vistas, own data, random crops); the norms of the mask
head must pass empty inputs forward and backward, synchronised or not.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from efficientps.engine.cpu_norms import cpu_safe_norms
from efficientps.modeling import InPlaceABN

from .helpers import small_cfg, training_sample


def thingless_cfg(world_size, inplace_abn):
    cfg = small_cfg()
    cfg.MODEL.EFFICIENTPS.INPLACE_ABN = inplace_abn
    return cpu_safe_norms(cfg, world_size, warn=False)  # BN in one process, naiveSyncBN in two


def training_step(cfg, batch, seed=0):
    """One forward/backward; (losses as floats, {name: grad}, the model)."""
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return {k: float(v) for k, v in losses.items()}, grads, model


def without_things(seed, size=(96, 128)):
    torch.manual_seed(seed)
    return training_sample(*size, boxes=(), classes=())


@pytest.mark.parametrize("inplace_abn", [False, True], ids=["BN", "iABN"])
def test_training_step_on_a_batch_without_things(inplace_abn):
    cfg = thingless_cfg(1, inplace_abn)
    losses, grads, model = training_step(cfg, [without_things(1), without_things(2)])
    assert any(isinstance(m, InPlaceABN) for m in model.modules()) == inplace_abn
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert losses["loss_mask"] == 0.0
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
    mask_head = dict(model.roi_heads.mask_head.named_parameters())
    assert all(p.grad.eq(0).all() for p in mask_head.values())


def _sync_worker(rank, init_file, batches, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg = thingless_cfg(2, inplace_abn=True)
    losses, grads, model = training_step(cfg, batches[rank])
    for grad in grads.values():
        dist.all_reduce(grad)  # what DDP does
    buffers = {k: v for k, v in model.state_dict().items() if "running" in k}
    sync_layers = sum(isinstance(m, InPlaceABN) and m.sync for m in model.modules())
    torch.save({"losses": losses, "grads": grads, "buffers": buffers, "sync": sync_layers},
               f"{results}.{rank}")  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.parametrize("things_on_rank_1", [False, True], ids=["none", "one-process-has"])
def test_two_process_iabn_sync_step_with_processes_without_things(tmp_path, things_on_rank_1):
    torch.manual_seed(3)
    with_things = training_sample(96, 128, boxes=((10, 20, 60, 80),), classes=(2,))
    batches = [[without_things(1)], [with_things if things_on_rank_1 else without_things(2)]]
    results = tmp_path / "result"
    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), batches, str(results)), nprocs=2)
    parts = [torch.load(f"{results}.{rank}") for rank in range(2)]
    assert parts[0]["sync"] > 0  # the mask head's iABN-sync really ran synchronised
    for part in parts:
        assert all(torch.isfinite(torch.tensor(v)) for v in part["losses"].values())
    assert (parts[1]["losses"]["loss_mask"] > 0) == things_on_rank_1
    for name, grad in parts[0]["grads"].items():
        assert grad is not None and torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, parts[1]["grads"][name])
    for name, buffer in parts[0]["buffers"].items():
        assert torch.isfinite(buffer).all(), name
        torch.testing.assert_close(buffer, parts[1]["buffers"][name], msg=name)
