"""Where converted OpenVINO models live on disk, and how an entry is named, written and read.

Converting the dense parts of an R50-FPN takes ~15-20 s on two cores; reading the saved
IR back takes well under a second. So the first run converts and later runs read.

An entry is a folder `<root>/<key>/` holding one `<part>.xml`/`<part>.bin` pair per
converted part and `entry.json` (the parts' file sizes and SHA-256, the output names).
It is written whole into a temp folder beside it and renamed into place, so a killed
run leaves no half entry under the key. An entry that does not read back (missing
file, wrong size or hash, unreadable IR) is deleted and rebuilt: never a crash.

The key hashes everything that decides the converted graphs: the parts' module
structure (`repr`, which names every layer and its channels), their tensors (weights
and buffers, bit for bit), the input shapes we convert with, our format version and
the OpenVINO version. Precision is not in it: the IR is kept in f32 and the precision
is a compile-time hint, so fp32 and bf16 runs share one entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrcnn_cli.atomic import TEMP_MARK

CACHE_ENV = "MRCNN_CACHE_DIR"
FORMAT_VERSION = 2  # bump when the conversion (inputs, wrappers, outputs) changes
ENTRY_FILE = "entry.json"


def cache_root() -> Path:
    """`$MRCNN_CACHE_DIR/openvino`, else `~/.cache/mrcnn/openvino` (XDG_CACHE_HOME honoured)."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser() / "openvino"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "mrcnn" / "openvino"


def _hash_tensors(digest: Any, module: nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def entry_key(parts: Mapping[str, nn.Module], inputs: Mapping[str, Any], ov_version: str) -> str:
    """A hex key naming one conversion: structure, weights, input shapes, versions."""
    digest = hashlib.sha256()
    digest.update(f"mrcnn-openvino-v{FORMAT_VERSION}|{ov_version}|".encode())
    digest.update(json.dumps(inputs, sort_keys=True, default=str).encode())
    for name, module in sorted(parts.items()):
        digest.update(f"|{name}|{module!r}|".encode())
        _hash_tensors(digest, module)
    return digest.hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_entry(folder: Path) -> dict[str, Any]:
    """The entry's metadata after checking every file it lists; raises if anything is off."""
    meta = json.loads((folder / ENTRY_FILE).read_text())
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError("entry lists no files")
    for name, (size, sha) in files.items():
        path = folder / name
        if path.stat().st_size != size or _file_sha256(path) != sha:
            raise ValueError(f"{name} does not match its recorded size and hash")
    return meta


def write_entry(folder: Path, fill: Callable[[Path], dict[str, Any]]) -> None:
    """Build an entry in a temp folder with `fill(tmp) -> meta`, then rename it to `folder`.

    If another process renamed its copy in first, ours is dropped (same key, same content).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{TEMP_MARK}", dir=folder.parent))
    try:
        meta = fill(tmp)
        meta["files"] = {p.name: [p.stat().st_size, _file_sha256(p)] for p in sorted(tmp.iterdir())}
        (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / ENTRY_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_entry(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
