"""Telling kinds of failure apart, and saying them in one line.

A resource error (device or host memory exhausted, a disk full) says nothing about the
data or the program: the same work may succeed with more room. It must never be taken for
damage (a checkpoint deleted because restoring it ran out of memory) nor end a choice
among alternatives that need less room (`auto`'s strategy probe)."""
from __future__ import annotations

import errno

# XLA / tensorstore status names and the messages of allocators that ran out of room.
_RESOURCE_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM ",
                     "OOM:", "No space left on device", "os_error_code='28'",
                     "Cannot allocate memory", "failed to allocate", "Failed to allocate")


def is_resource_error(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
        return True
    text = f"{type(e).__name__}: {e}"
    return any(m in text for m in _RESOURCE_MARKERS)


def one_line(e: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, cut to `limit` characters (XLA messages run to
    pages; tensorstore appends its whole JSON spec)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" [tensorstore_spec=")[0]
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
