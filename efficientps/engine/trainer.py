"""EfficientPS' trainer: detectron2's DefaultTrainer with CPU-capable DDP, crash-safe
checkpoints that always hold the optimizer, a data stream that resumes where it stopped, and
EfficientPS' loaders, evaluator and test-time augmentation.

Built on detectron2's public API only, so that it behaves the same on v0.6 and on main.
"""

import inspect
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.utils import comm

from ..data import EfficientPSPanopticMapper
from ..evaluation import build_evaluator
from ..modeling.meta_arch import EfficientPSWithTTA
from .checkpoint import AtomicCheckpointer
from .optimizer import build_optimizer
from .sampler import ResumableTrainingSampler

logger = logging.getLogger("efficientps")


def _pinned_memory_option(cfg):
    """``pin_memory=True`` for GPU training where detectron2's loader takes it (main since
    2023; v0.6 has no such argument): page-locked batches copy to the GPU asynchronously."""
    takes_it = "pin_memory" in inspect.signature(build_batch_data_loader).parameters
    on_gpu = str(cfg.MODEL.DEVICE).startswith("cuda")
    return {"pin_memory": True} if takes_it and on_gpu else {}


class StartsOnFirstBatch:
    """An iterable whose iterator starts its source at the first ``next()``, not at ``iter()``.

    detectron2 v0.6's SimpleTrainer calls ``iter(data_loader)`` in its constructor, which
    starts the loader's workers and its sampler from position 0 before ``--resume`` can tell
    the sampler where the checkpoint left the data stream; main starts it lazily.
    """

    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return _DeferredIterator(self.iterable)

    def __len__(self):
        return len(self.iterable)


class _DeferredIterator:
    def __init__(self, iterable):
        self.iterable = iterable
        self.iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.iterator is None:
            self.iterator = iter(self.iterable)
        return next(self.iterator)


class EfficientPSTrainer(DefaultTrainer):
    """DefaultTrainer for EfficientPS on GPUs and CPUs, v0.6 and main alike.

    Differences from DefaultTrainer, each for a reason:
    - DDP: on the CPU (gloo) the model is wrapped without ``device_ids`` (DefaultTrainer passes
      the local rank, which DDP rejects for CPU modules).
    - Checkpoints are written atomically and hold the optimizer and the LR scheduler on every
      detectron2 version (v0.6's DefaultTrainer checkpoint leaves out SGD momentum).
    - The data stream resumes at the checkpoint's position (ResumableTrainingSampler).
    - SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" clips the norm of all gradients together
      (the paper's clipping; ``engine.optimizer``).
    """

    def __init__(self, cfg):
        """DefaultTrainer.__init__ written out, because two of its steps must differ and it
        offers no hook for either: it wraps DDP with ``device_ids`` (which DDP rejects for CPU
        modules) and hands ``SimpleTrainer`` the loader itself (which v0.6 starts at once, from
        position 0, before ``resume_or_load`` can tell the sampler where to continue). The
        sampler is built here and kept, so that ``resume_or_load`` can move it."""
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        dataset = self.build_train_dataset(cfg)
        self.train_sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED)
        data_loader = self.build_train_loader(cfg, dataset=dataset, sampler=self.train_sampler)
        ddp_options = {"broadcast_buffers": False}
        if next(model.parameters()).device.type == "cpu":
            ddp_options["device_ids"] = None
        model = create_ddp_model(model, **ddp_options)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, StartsOnFirstBatch(data_loader), optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hook_list = super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED:  # after the plain evaluation, at the end of training
            hook_list.append(hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model)))
        return hook_list

    def state_dict(self):
        state = TrainerBase.state_dict(self)  # iteration and the hooks' states
        state["_trainer"] = self._trainer.state_dict()  # the optimizer (SGD momentum)
        state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state):
        TrainerBase.load_state_dict(self, state)
        self._trainer.load_state_dict(state["_trainer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The data stream continues where the checkpoint left it (not from its start); the
        # loader starts at the first batch, after this.
        self.train_sampler.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH

    @classmethod
    def build_optimizer(cls, cfg, model):
        # SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model": the paper's global-norm clipping.
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_dataset(cls, cfg):
        """The records of DATASETS.TRAIN, concatenated by detectron2 (which fails on an empty
        dataset and checks that the class lists agree); panoptic records have no
        "annotations" to filter on."""
        return get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)

    @classmethod
    def build_train_loader(cls, cfg, *, dataset=None, sampler=None):
        """detectron2's train loader with EfficientPS' mapper and a ``ResumableTrainingSampler``
        (from position 0 unless ``sampler`` is given; the trainer passes the one it resumes)."""
        if dataset is None:
            dataset = cls.build_train_dataset(cfg)
        if sampler is None:
            sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED)
        return build_detection_train_loader(
            dataset,
            mapper=EfficientPSPanopticMapper(cfg, is_train=True),
            sampler=sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            **_pinned_memory_option(cfg),
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=EfficientPSPanopticMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        logger.info("Evaluating with test-time augmentation (multi-scale + flip)")
        model = EfficientPSWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())
