"""Crash-safe checkpoints: a checkpoint file or the last_checkpoint tag is never half-written.

detectron2 writes both in place, so a kill during the write leaves a truncated file that
``--resume`` would then try to load. Here each is written to a temporary file in the same
folder, flushed to disk and renamed over the target (atomic on POSIX).
"""

import logging
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

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
