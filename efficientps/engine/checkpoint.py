"""Checkpoint files: written crash-safe, read as untrusted.

Writing: a checkpoint file or the last_checkpoint tag is never half-written. detectron2 writes
both in place, so a kill during the write leaves a truncated file that ``--resume`` would then
try to load. Here each is written to a temporary file in the same folder, flushed to disk and
renamed over the target (atomic on POSIX).

Reading: files users download are untrusted. Every load, training init and ``--resume``
included, goes through ``weight_files`` (tensors, NumPy arrays and plain containers only); a
file that needs other objects is refused, not unpickled; errors name the option that gave the
file.
"""

import logging
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from .weight_files import detectron2_checkpoint, state_dict_of

logger = logging.getLogger(__name__)


def atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, writing crash-safe and reading untrusted files safely."""

    def _load_file(self, filename):
        # fvcore's documented hook for reading a file: detectron2's own unpickles .pkl files
        # with pickle.load (any code in them runs) and .pth with torch's default.
        folder = os.path.dirname(os.path.abspath(filename))
        resuming = bool(self.save_dir) and folder == os.path.abspath(self.save_dir)
        what = f"--resume (last checkpoint in {self.save_dir})" if resuming else "MODEL.WEIGHTS"
        return detectron2_checkpoint(filename, what)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not comm.is_main_process():
            return
        tag = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(tag, lambda f: f.write(last_filename_basename.encode()))

    def get_checkpoint_file(self):
        """The tagged checkpoint if it exists and is complete, else the newest complete one."""
        path = super().get_checkpoint_file()
        if path and os.path.isfile(path):
            return path
        if path:
            logger.warning(f"last_checkpoint names {path}, which does not exist; looking further")
        candidates = [
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and not f.startswith(".tmp-")
        ]
        return max(candidates, key=os.path.getmtime) if candidates else ""


def read_checkpoint(path):
    """The state dict of MODEL.WEIGHTS (a checkpoint or bare state dict), read safely."""
    if not path:
        raise ValueError("MODEL.WEIGHTS is empty: set MODEL.WEIGHTS /path/to/model.pth")
    return state_dict_of(path, "MODEL.WEIGHTS")


def load_weights_or_fail(model, path, save_dir=""):
    """Load MODEL.WEIGHTS into ``model`` for inference, failing clearly on a wrong file.

    The file is checked first (``read_checkpoint``; at least half of the model's tensors must
    be in it), then loaded by detectron2's checkpointer logic (our safe reader underneath),
    which reports missing and unexpected keys and skips tensors of the wrong shape.
    """
    weights = read_checkpoint(path)
    check_weights_fit(model, weights, path)
    AtomicCheckpointer(model, save_dir=save_dir).load(path, checkpointables=[])


def check_weights_fit(model, weights, path):
    """Fail unless ``weights`` hold at least half of ``model``'s tensors (else: wrong file)."""
    expected = set(model.state_dict())
    found = set(weights) & expected
    if len(found) < len(expected) // 2:
        raise ValueError(
            f"MODEL.WEIGHTS: {path!r} holds {len(found)} of the model's {len(expected)} tensors; "
            "it is not a checkpoint of this model (wrong config or file?)"
        )
    logger.info(f"{path}: {len(found)}/{len(expected)} of the model's tensors")
