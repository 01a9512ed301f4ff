"""Activation checkpointing that leaves BatchNorm's running statistics as one forward leaves them.

``torch.utils.checkpoint`` keeps only a module's input and runs the module again during backward
to get what backward needs. A training-mode BatchNorm (or iABN) would then update its running
statistics twice per step. The second run here restores them afterwards, so a step with
checkpointing leaves exactly the parameters, gradients and statistics of a step without it (the
RNG state, e.g. of drop-connect, is replayed by torch's checkpoint itself).
"""

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _statistics_restored(module):
    batchnorms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in batchnorms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def checkpointed(module, *inputs, function=None):
    """``module(*inputs)`` (or ``function(*inputs)``, which runs ``module``'s layers) keeping
    only the inputs for backward, which recomputes the rest."""
    return checkpoint(
        function or module,
        *inputs,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _statistics_restored(module)),
    )


def checkpointing_active(enabled, module):
    """Checkpoint only where it saves something: training with autograd recording."""
    return enabled and module.training and torch.is_grad_enabled()
