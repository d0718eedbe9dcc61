"""The one way this package writes files: to a temp file beside the target, then rename.

A run that is killed mid-write leaves either the old file or the new one, never half.
A killed run can leave its temp files (`.{name}.tmp~XXXXXXXX{suffix}`) behind; the next
run on that folder removes them (`remove_stale_temp_files`, under the output lock).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DEFAULT_MODE = 0o666 & ~_umask()
TEMP_MARK = ".tmp~"  # in every temp name, so stale ones can be found and removed


def remove_stale_temp_files(folder: Path | str) -> int:
    """Delete temp files a killed run left anywhere below `folder`; return how many.

    Only call this while holding the folder's output lock: a running writer's temp
    file looks the same.
    """
    removed = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and TEMP_MARK in name:
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


@contextmanager
def atomic_path(target: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `target` on success.

    `suffix` defaults to the target's own, so encoders that pick a format from the
    file name (OpenCV, PyAV) see the right extension.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}{TEMP_MARK}",
        suffix=suffix if suffix is not None else target.suffix,
        dir=target.parent,
    )
    os.close(fd)
    os.chmod(tmp, _DEFAULT_MODE)  # mkstemp makes 0600; outputs are ordinary files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path | str, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path | str, obj: Any, indent: int | None = None) -> None:
    write_text(target, json.dumps(obj, indent=indent))
