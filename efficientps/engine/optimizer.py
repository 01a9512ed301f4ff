"""The optimizer, with the paper's gradient clipping: one L2 norm over all gradients.

detectron2's SOLVER.CLIP_GRADIENTS offers CLIP_TYPE "value" and "norm"; its "norm" clips each
parameter tensor by its own norm, so at 35 it almost never acts on a model of 40 M parameters
in ~500 tensors. EfficientPS (paper and the authors' code) clips the norm of all gradients
taken together. CLIP_TYPE "full_model" does that here, inside the optimizer's ``step`` (where
detectron2 does its own clipping), so that every trainer built on ``build_optimizer`` gets it;
after DDP's all-reduce every process sees the same norm, and AMP's GradScaler unscales the
gradients before it calls ``step``. Modules whose gradients come from detached inputs only
(``detached_inputs = True``: the learned fusion's quality) are not the network and stay out
of its norm, so that adding them changes nothing of the network's training.
"""

import itertools

import torch
from detectron2.solver import build_optimizer as detectron2_build_optimizer

FULL_MODEL = "full_model"


def full_model_clipping(optimizer_class, max_norm, norm_type=2.0, unclipped=()):
    """A subclass of ``optimizer_class`` whose step first clips the global gradient norm of all
    parameters but ``unclipped``."""
    unclipped_ids = {id(p) for p in unclipped}

    class FullModelGradientClipping(optimizer_class):
        def step(self, closure=None):
            parameters = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
            parameters = [p for p in parameters if id(p) not in unclipped_ids]
            torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_class.__name__}WithFullModelClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model):
    """detectron2's optimizer for ``cfg``, or with CLIP_TYPE "full_model" the global-norm clip."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return detectron2_build_optimizer(cfg, model)
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False  # detectron2 does not know "full_model"
    optimizer = detectron2_build_optimizer(plain, model)
    unclipped = [
        p for m in model.modules() if getattr(m, "detached_inputs", False) for p in m.parameters()
    ]
    optimizer.__class__ = full_model_clipping(
        type(optimizer), clip.CLIP_VALUE, norm_type=clip.NORM_TYPE, unclipped=unclipped
    )
    return optimizer
