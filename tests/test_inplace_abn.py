"""In-place activated BN: the same function and gradients as BN + LeakyReLU, with less saved."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

from efficientps.modeling import InPlaceABN, configure_inference, convert_to_inplace_abn
from efficientps.modeling.layers import SeparableConv2d, conv_norm_act

from .helpers import kept_bytes


def bn_with_awkward_weights(channels=6):
    bn = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01).double()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(1)))
        bn.weight[0] = 1e-5  # too small to invert: kept from the input
        bn.weight[1] = -0.8  # ImageNet EfficientNets have negative gammas
        bn.bias.uniform_(-1, 1)
    return bn


def run(module, x, grad, activation=None):
    x = x.clone().requires_grad_(True)
    out = module(x * 1.0)  # not a leaf: the input of a norm is a conv output in practice
    out = activation(out) if activation is not None else out
    (out * grad).sum().backward()
    return out.detach(), x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("slope", [0.01, 0.2, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_gradients_and_statistics_as_batchnorm_plus_leaky_relu(slope, channels_last):
    torch.manual_seed(0)
    bn = bn_with_awkward_weights()
    abn = InPlaceABN(6, slope=slope, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    act = None if slope is None else (lambda t: F.leaky_relu(t, slope))
    for _ in range(2):  # twice: running statistics and num_batches_tracked move alike
        bn.zero_grad(), abn.zero_grad()
        expected = run(bn, x, grad, act)
        actual = run(abn, x, grad)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)
    for name, buffer in bn.named_buffers():
        torch.testing.assert_close(getattr(abn, name), buffer, atol=1e-12, rtol=1e-12)
    bn.eval(), abn.eval()
    with torch.no_grad():
        expected = bn(x) if act is None else act(bn(x))
        torch.testing.assert_close(abn(x), expected)


def test_training_without_autograd_matches_batchnorm():
    bn = bn_with_awkward_weights()
    abn = InPlaceABN(6, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(bn.state_dict())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(abn(x), F.leaky_relu(bn(x), 0.01))
    torch.testing.assert_close(abn.running_var, bn.running_var)


def conv_stack(norm="BN", act="leaky_relu"):
    torch.manual_seed(0)
    return nn.Sequential(
        conv_norm_act(8, 32, 1, norm=norm, act=act),
        SeparableConv2d(32, 32, 3, norm=norm, act=act),
        conv_norm_act(32, 8, 1, norm=norm),  # BN without activation (EfficientNet's projection)
    )


def test_converted_model_keeps_half_the_activations_and_the_same_state_dict():
    model = conv_stack()
    converted = copy.deepcopy(model)
    assert convert_to_inplace_abn(converted) == 4
    assert list(converted.state_dict()) == list(model.state_dict())
    convs = [m for m in converted.modules() if hasattr(m, "norm")]
    assert all(isinstance(m.norm, InPlaceABN) and m.activation is None for m in convs)
    x = torch.randn(2, 8, 64, 64, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
    _, plain = kept_bytes(lambda: model(x).sum())
    _, inplace = kept_bytes(lambda: converted(x).sum())
    assert inplace < 0.6 * plain, (plain, inplace)

    model.double(), converted.double()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    weights = torch.randn(2, 8, 16, 16, dtype=torch.float64)  # a loss BN is not invariant to
    (model(x) * weights).sum().backward()
    (converted(x) * weights).sum().backward()
    for (name, p), q in zip(model.named_parameters(), converted.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-9, rtol=1e-7, msg=name)


def test_conversion_leaves_what_it_cannot_invert_and_folding_keeps_the_activation():
    swish = conv_stack(act="swish")
    assert convert_to_inplace_abn(swish) == 1  # only the projection (BN, no activation)
    frozen = conv_stack()
    for m in frozen.modules():
        if hasattr(m, "norm") and isinstance(m.norm, nn.BatchNorm2d):
            m.norm = FrozenBatchNorm2d(m.norm.num_features)
    assert convert_to_inplace_abn(frozen) == 0

    model = conv_stack()
    with torch.no_grad():
        model.train()(torch.randn(4, 8, 16, 16) * 3)  # BN statistics away from identity
    convert_to_inplace_abn(model)
    model.eval()
    x = torch.randn(1, 8, 16, 16)
    assert configure_inference(model, fold_norm=False) == 4
    with torch.no_grad():
        expected = model(x)
        configure_inference(model, fold_norm=True)
        folded = model(x)
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    assert isinstance(model[0].norm, InPlaceABN) and model[0].activation is None


def _sync_worker(rank, init_file, x, grad, state, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    abn = InPlaceABN(6, sync=True, eps=1e-3, momentum=0.01).double()
    abn.load_state_dict(state)
    half = x.shape[0] // 2
    mine = slice(rank * half, (rank + 1) * half)
    out, dx, dw, db = run(abn, x[mine], grad[mine])
    dist.all_reduce(dw), dist.all_reduce(db)  # what DDP does with the local parameter grads
    torch.save(
        {"out": out, "dx": dx, "dw": dw, "db": db, "running_var": abn.running_var},
        f"{results}.{rank}",
    )
    dist.destroy_process_group()


def test_sync_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    bn = bn_with_awkward_weights()
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    grad = torch.randn_like(x)
    results = tmp_path / "result"
    args = (str(tmp_path / "init"), x, grad, bn.state_dict(), str(results))
    mp.spawn(_sync_worker, args=args, nprocs=2, join=True)
    single = InPlaceABN(6, eps=1e-3, momentum=0.01).double()
    single.load_state_dict(bn.state_dict())
    out, dx, dw, db = run(single, x, grad)
    parts = [torch.load(f"{results}.{rank}") for rank in range(2)]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), out)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), dx)
    for part in parts:
        torch.testing.assert_close(part["dw"], dw)
        torch.testing.assert_close(part["db"], db)
        torch.testing.assert_close(part["running_var"], single.running_var)


def _autocast(dtype):
    reduced = dtype in (torch.float16, torch.bfloat16)
    return torch.autocast("cpu", dtype=dtype if reduced else torch.bfloat16, enabled=reduced)


def _abn_step(abn, x, seed):
    """Forward + backward of ``abn`` on ``x`` (under autocast for float16/bfloat16 inputs);
    everything a test compares, detached."""
    x = x.clone().requires_grad_(True)
    with _autocast(x.dtype):
        out = abn(x * 1)  # not a leaf, as a conv output
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out.double() * grad.double()).sum().backward()
    return {
        "out": out.detach(),
        "dx": x.grad,
        "dw": abn.weight.grad.clone(),
        "db": abn.bias.grad.clone(),
        "running_mean": abn.running_mean.clone(),
        "running_var": abn.running_var.clone(),
    }


def _sync_step_worker(rank, init_file, inputs, state, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    abn = InPlaceABN(len(state["weight"]), sync=True, momentum=1.0)  # running = batch statistics
    abn.load_state_dict(state)
    torch.save(_abn_step(abn, inputs[rank], seed=rank), f"{results}.{rank}")
    dist.destroy_process_group()


def sync_step_on_two_processes(tmp_path, inputs, state):
    results = tmp_path / "result"
    args = (str(tmp_path / "init"), inputs, state, str(results))
    mp.spawn(_sync_step_worker, args=args, nprocs=2, join=True)
    return [torch.load(f"{results}.{rank}") for rank in range(2)]


def offset_activations(shape, dtype, seed):
    """Activations whose mean is far from 0 relative to their spread (|mean| / std = 6-12)."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    mean = torch.linspace(3, 6, channels).reshape(1, -1, 1, 1)
    return (torch.randn(shape, generator=generator) * 0.5 + mean).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sync_statistics_under_autocast_at_512x1024_match_float64(dtype, tmp_path):
    """detectron2's AMPTrainer runs float16 autocast: 512x1024 pixels per channel overflow a
    float16 sum of squares (and the count itself: 65504 is float16's largest value)."""
    inputs = [offset_activations((1, 4, 512, 1024), dtype, seed) for seed in (1, 2)]
    state = bn_with_awkward_weights(4).float().state_dict()
    parts = sync_step_on_two_processes(tmp_path, inputs, state)

    everything = torch.cat(inputs).double()
    mean = everything.mean((0, 2, 3))
    var = everything.var((0, 2, 3), unbiased=False)
    unbiased = everything.var((0, 2, 3), unbiased=True)
    scale = state["weight"].double() / torch.sqrt(var + 1e-5)
    shift = state["bias"].double() - mean * scale
    for rank, part in enumerate(parts):
        assert part["out"].dtype == dtype  # not float32: half the saved activation memory
        assert part["dx"].dtype == dtype and torch.isfinite(part["dx"]).all()
        torch.testing.assert_close(part["running_mean"].double(), mean, rtol=1e-3, atol=0)
        torch.testing.assert_close(part["running_var"].double(), unbiased, rtol=1e-3, atol=0)
        expected = F.leaky_relu(inputs[rank].double() * _per_channel(scale) + _per_channel(shift))
        resolution = torch.finfo(dtype).eps  # one rounding of the output to its dtype
        error = (part["out"].double() - expected).abs() / (expected.abs() + 1)
        assert error.max() <= 2 * resolution, error.max()
    # Gradients: those of one float64 process on the whole batch (the same output gradients).
    reference = InPlaceABN(4, momentum=1.0).double()
    reference.load_state_dict(state)
    x = everything.clone().requires_grad_(True)
    out = reference(x * 1)
    grads = [
        torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(rank)).double()
        for rank in range(2)
    ]
    (out * torch.cat(grads)).sum().backward()
    for rank, part in enumerate(parts):
        expected_dx = x.grad[rank : rank + 1]
        error = (part["dx"].double() - expected_dx).abs().max() / expected_dx.abs().max()
        assert error <= 8 * torch.finfo(dtype).eps, error
    # DDP's all-reduce of the local grads. iABN recovers x_hat from the stored low-precision
    # output, y / weight: a channel with a small weight amplifies y's rounding (< 1% here).
    dw = (parts[0]["dw"] + parts[1]["dw"]).double()
    torch.testing.assert_close(dw, reference.weight.grad, rtol=1e-2, atol=1e-3 * dw.abs().max())


def _per_channel(t):
    return t.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_single_process_under_autocast_keeps_the_dtype_and_float32_statistics(dtype):
    abn = InPlaceABN(4, momentum=1.0)
    x = offset_activations((2, 4, 64, 128), dtype, seed=3)
    result = _abn_step(abn, x, seed=0)
    assert result["out"].dtype == result["dx"].dtype == dtype
    everything = x.double()
    torch.testing.assert_close(
        result["running_mean"].double(), everything.mean((0, 2, 3)), rtol=1e-3, atol=0
    )
    torch.testing.assert_close(
        result["running_var"].double(), everything.var((0, 2, 3)), rtol=1e-3, atol=0
    )


def test_empty_input_passes_forward_and_backward_without_touching_statistics():
    """The mask head gets 0 regions when no image of a process's batch has a thing."""
    abn = InPlaceABN(6, momentum=0.5)
    before = copy.deepcopy(abn.state_dict())
    result = _abn_step(abn, torch.zeros(0, 6, 14, 14), seed=0)
    assert result["out"].shape == (0, 6, 14, 14) and result["dx"].shape == (0, 6, 14, 14)
    assert result["dw"].eq(0).all() and result["db"].eq(0).all()
    torch.testing.assert_close(abn.running_mean, before["running_mean"])
    torch.testing.assert_close(abn.running_var, before["running_var"])
    abn.eval()
    assert abn(torch.zeros(0, 6, 14, 14)).shape == (0, 6, 14, 14)


def test_sync_with_an_empty_process_equals_the_other_process_alone(tmp_path):
    """A process without pixels still joins both collectives (forward and backward) and adds
    nothing to the statistics."""
    bn = bn_with_awkward_weights()
    state = bn.float().state_dict()
    data = offset_activations((2, 6, 5, 7), torch.float32, seed=4)
    parts = sync_step_on_two_processes(tmp_path, [torch.zeros(0, 6, 5, 7), data], state)
    alone = InPlaceABN(6, momentum=1.0)
    alone.load_state_dict(state)
    expected = _abn_step(alone, data, seed=1)
    assert parts[0]["out"].shape == (0, 6, 5, 7)
    for key in ("out", "dx", "dw", "db", "running_mean", "running_var"):
        torch.testing.assert_close(parts[1][key], expected[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts[0]["running_var"], expected["running_var"])
    assert parts[0]["dw"].eq(0).all()


def test_sync_with_every_process_empty_keeps_the_running_statistics(tmp_path):
    state = bn_with_awkward_weights().float().state_dict()
    empty = torch.zeros(0, 6, 5, 7)
    for part in sync_step_on_two_processes(tmp_path, [empty, empty], state):
        torch.testing.assert_close(part["running_mean"], state["running_mean"])
        torch.testing.assert_close(part["running_var"], state["running_var"])
        assert part["dw"].eq(0).all() and part["db"].eq(0).all()
