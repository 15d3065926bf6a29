"""Checkpoints of the whole ensemble state with orbax (atomic: orbax writes to a temporary
directory `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when complete, so a
killed save is never restored; leftover temporaries are removed on the next open).

`format.json` beside the step folders records the checkpoint format and package version;
a resume from another version is refused. A checkpoint that is damaged after the fact
(files deleted or truncated, a failed format check) fails to restore: `restore_latest`
then falls back to the previous step with a warning, deleting the damaged one so that
training re-saves it, and fails with a clear message if no step restores. Only proven
damage is deleted: a restore that runs out of memory (or fails for any reason that is not
damage) stops with one clear line and leaves every checkpoint in place.

orbax reports a failed save (a full disk, say) from its background threads through absl
logging, several hundred lines of tracebacks per save; those loggers are silenced around
saves and restores, and the failure becomes one `CheckpointWriteError` line naming the
directory.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ensemble_jax import io as eio
from ensemble_jax.training.errors import is_resource_error, one_line
from ensemble_jax import logs

CHECKPOINT_FORMAT = 1
FORMAT_FILE = "format.json"
# Loggers orbax (and the asyncio loops of its threads) report save failures through.
NOISY_LOGGERS = ("absl", "orbax", "asyncio", "tensorstore")
# Markers of a checkpoint whose files are missing, cut short or not what they should be
# (tensorstore status names; orbax's own messages); see tests/test_reliability.py.
_DAMAGE_MARKERS = ("NOT_FOUND", "OUT_OF_RANGE", "DATA_LOSS", "Truncated", "truncated",
                   "Error decoding", "checksum", "does not exist", "Unexpected end",
                   "corrupt")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, no permission ...); one line."""


class CheckpointRestoreError(ValueError):
    """A checkpoint could not be restored for a reason that is not damage (out of memory,
    say); nothing was deleted. A ValueError, so the command line reports it in one line."""


def is_damage(e: BaseException) -> bool:
    """True only for errors that show the checkpoint's files are missing or corrupt."""
    if is_resource_error(e):
        return False
    if isinstance(e, (FileNotFoundError, json.JSONDecodeError, EOFError)):
        return True
    return isinstance(e, ValueError) and any(m in str(e) for m in _DAMAGE_MARKERS)


@contextlib.contextmanager
def quiet_orbax():
    """Silences orbax's logging (tracebacks from its background threads) in the block;
    failures still raise, and are reported once by the caller."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


def _write_reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in text \
            or "os_error_code='28'" in text:
        return "no space left on device"
    if isinstance(e, PermissionError) or "Permission denied" in text:
        return "permission denied"
    return one_line(e)


def _package_version() -> str:
    from ensemble_jax import __version__
    return __version__


class Checkpointer:
    """resume=False refuses a directory that already holds checkpoints (orbax would skip
    saving the steps that exist, silently mixing two runs); resume=True refuses one written
    by another checkpoint format or package version."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, *,
                 resume: bool | None = None):
        self.directory = Path(directory).resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"checkpoint directory {self.directory}: is a file")
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
        try:
            if jax.process_index() == 0 and not (self.directory / FORMAT_FILE).exists():
                eio.write_json(self.directory / FORMAT_FILE, self.version())  # process 0
            with quiet_orbax():
                self.manager.save(step, args=ocp.args.StandardSave(tree))
                self.manager.wait_until_finished()
        except Exception as e:   # noqa: BLE001 - orbax raises ValueError, OSError, ...
            latest = [p for p in self.manager.all_steps() if p != step]
            keep = (f"the last complete checkpoint is step {max(latest)}" if latest
                    else "no complete checkpoint yet")
            raise CheckpointWriteError(
                f"checkpoint directory {self.directory}: could not write step {step}: "
                f"{_write_reason(e)} ({keep}; free room there and continue with --resume)"
            ) from None

    def restore_latest(self, like: Any) -> tuple[int, Any]:
        """(step, tree) of the newest checkpoint that restores; damaged newer ones are
        reported and deleted. Raises ValueError naming each failure if none restores, and
        CheckpointRestoreError (deleting nothing) on a failure that is not damage."""
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                tree = self.restore(step, like)
            except Exception as e:  # noqa: BLE001 - sorted into damage / not below
                if not is_damage(e):
                    if is_resource_error(e):
                        kind, advice = "ran out of memory", (
                            "free memory (fewer members per wave, other processes on the "
                            "device) and resume again")
                    else:
                        kind, advice = "failed, and the error does not show damage", (
                            "fix the cause and resume again")
                    raise CheckpointRestoreError(
                        f"{self.directory}: restoring checkpoint step {step} {kind} "
                        f"({one_line(e)}); no checkpoint was deleted; {advice}") from e
                msg = f"step {step}: {one_line(e, 300)}"
                errors.append(msg)
                logs.warning(f"warning: {self.directory}: checkpoint {msg}; it is damaged, "
                             f"trying the previous one")
                continue
            for bad in sorted(self.manager.all_steps()):
                if bad > step:
                    self.manager.delete(bad)
                    logs.warning(f"warning: {self.directory}: deleted damaged checkpoint {bad}; "
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
        with quiet_orbax():
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        with quiet_orbax():
            self.manager.wait_until_finished()
            self.manager.close()
