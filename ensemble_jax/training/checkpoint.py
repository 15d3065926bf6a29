"""Checkpoints of the whole ensemble state with orbax (atomic: orbax writes to a temporary
directory and renames it when complete, so a killed save is never restored)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        # Synchronous: the next chunk may reuse the buffers, and a finished save is the
        # only kind a resume should ever see.
        self.manager.save(step, args=ocp.args.StandardSave(tree))
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> Any:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype
                                           if not hasattr(x, "dtype") else x.dtype,
                                           sharding=getattr(x, "sharding", None)), like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
