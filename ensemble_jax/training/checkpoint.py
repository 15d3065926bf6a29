"""Checkpoints of the whole ensemble state with orbax (atomic: orbax writes to a temporary
directory `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when complete, so a
killed save is never restored; leftover temporaries are removed on the next open).

`format.json` beside the step folders records the checkpoint format and package version;
a resume from another version is refused. A checkpoint that is damaged after the fact
(files deleted or truncated) fails to restore: `restore_latest` then falls back to the
previous step with a warning, deleting the damaged one so that training re-saves it, and
fails with a clear message if no step restores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from ensemble_jax import io as eio

CHECKPOINT_FORMAT = 1
FORMAT_FILE = "format.json"


def _package_version() -> str:
    from ensemble_jax import __version__
    return __version__


class Checkpointer:
    """resume=False refuses a directory that already holds checkpoints (orbax would skip
    saving the steps that exist, silently mixing two runs); resume=True refuses one written
    by another checkpoint format or package version."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, *,
                 resume: bool | None = None, log: Callable[[str], None] | None = None):
        self.directory = Path(directory).resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"checkpoint directory {self.directory}: is a file")
        self.log = log or (lambda msg: None)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 cleanup_tmp_directories=True))
        steps = list(self.manager.all_steps())
        if resume is False and steps:
            raise ValueError(
                f"{self.directory}: already holds checkpoints (steps {sorted(steps)}) of an "
                f"earlier run; resume from them (--resume / resume=True) or delete the "
                f"directory to start over")
        if resume and steps:
            self.check_version()

    def version(self) -> dict:
        return {"checkpoint_format": CHECKPOINT_FORMAT, "package_version": _package_version()}

    def check_version(self) -> None:
        path = self.directory / FORMAT_FILE
        try:
            found = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{path}: missing; these checkpoints were written by another version of "
                f"ensemble_jax (before checkpoint format {CHECKPOINT_FORMAT}) and cannot be "
                f"resumed; start a new run directory") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable ({e}); cannot check the checkpoints' "
                             f"version") from e
        want = self.version()
        diff = [f"{k} {found.get(k)!r} (this is {v!r})" for k, v in want.items()
                if not isinstance(found, dict) or found.get(k) != v]
        if diff:
            raise ValueError(
                f"{self.directory}: checkpoints from another version cannot be resumed: "
                f"{'; '.join(diff)}; start a new run directory or use that version")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        # Synchronous: the next chunk may reuse the buffers, and a finished save is the
        # only kind a resume should ever see.
        if jax.process_index() == 0 and not (self.directory / FORMAT_FILE).exists():
            eio.write_json(self.directory / FORMAT_FILE, self.version())  # process 0 only
        self.manager.save(step, args=ocp.args.StandardSave(tree))
        self.manager.wait_until_finished()

    def restore_latest(self, like: Any) -> tuple[int, Any]:
        """(step, tree) of the newest checkpoint that restores; damaged newer ones are
        reported and deleted. Raises ValueError naming each failure if none restores."""
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, like)
            except Exception as e:  # missing / truncated files: tensorstore, ValueError ...
                msg = f"step {step}: {type(e).__name__}: {str(e)[:300]}"
                errors.append(msg)
                self.log(f"warning: {self.directory}: checkpoint {msg}; it is damaged, "
                         f"trying the previous one")
                continue
            for bad in sorted(self.manager.all_steps()):
                if bad > step:
                    self.manager.delete(bad)
                    self.log(f"warning: {self.directory}: deleted damaged checkpoint {bad}; "
                             f"resuming from step {step}")
            return step, tree
        raise ValueError(f"{self.directory}: no checkpoint could be restored ("
                         f"{'; '.join(errors) or 'none found'}); delete the directory and "
                         f"start over")

    def restore(self, step: int, like: Any) -> Any:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype
                                           if not hasattr(x, "dtype") else x.dtype,
                                           sharding=getattr(x, "sharding", None)), like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
