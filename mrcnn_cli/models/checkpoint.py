"""Our checkpoint format: tensors plus the plain metadata inference needs.

A checkpoint written by `mrcnn train` is one `torch.save` file holding only tensors,
strings, numbers, lists and dicts, so it loads with `weights_only=True` (no pickled
code runs). The metadata names the architecture, its options, the class names with
their dataset category ids, and the preprocessing (input size, mean/std), so that
`mrcnn segment --model run/best.pt` needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.errors import MrcnnError

FORMAT = "mrcnn-checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle stream
VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What a model needs besides its tensors.

    class_names[i] / category_ids[i] describe label i (index 0 is the background).
    settings are MaskRCNN keyword arguments (min_size, max_size, image_mean, ...);
    arch_options are the builder's own (roi_op, fpn_channels, ...).
    """

    arch: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    arch_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.category_ids):
            raise ValueError("class_names and category_ids must have the same length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "settings": dict(self.settings),
            "arch_options": dict(self.arch_options),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        return cls(
            arch=str(d["arch"]),
            class_names=tuple(str(n) for n in d["class_names"]),
            category_ids=tuple(int(i) for i in d["category_ids"]),
            settings=dict(d.get("settings", {})),
            arch_options=dict(d.get("arch_options", {})),
        )


def save_checkpoint(
    path: Path | str,
    state_dict: dict[str, torch.Tensor],
    meta: ModelMeta,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write atomically. `half` stores floating tensors as fp16 (loaded back as fp32)."""
    tensors = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in state_dict.items()
    }
    payload = {"format": FORMAT, "version": VERSION, "meta": meta.to_dict(), "model": tensors}
    if extra:
        payload["extra"] = extra
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class Checkpoint:
    meta: ModelMeta
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any]


def read_torch_file(path: Path) -> Any:
    """torch.load with weights_only, turning every failure into one clear message."""
    if not path.is_file():
        raise MrcnnError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise MrcnnError(f"checkpoint is empty (0 bytes): {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise MrcnnError(f"{path} is not a PyTorch checkpoint (neither a zip nor a pickle file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        text = str(exc).strip()
        if "Weights only load failed" in text:  # torch's advice to unpickle code: not ours
            reason = "it holds Python objects besides tensors, which are not loaded for safety"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise MrcnnError(f"cannot read checkpoint {path}: {reason}") from exc


def is_mrcnn_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: Path | str) -> Checkpoint:
    path = Path(path)
    obj = read_torch_file(path)
    if not is_mrcnn_checkpoint(obj):
        raise MrcnnError(
            f"{path} is not an mrcnn checkpoint (no metadata); a torchvision state dict "
            "goes with --weights and a --model architecture name"
        )
    if int(obj.get("version", 0)) > VERSION:
        raise MrcnnError(f"{path} was written by a newer mrcnn (format {obj['version']})")
    return checkpoint_from_payload(obj)


def checkpoint_from_payload(obj: dict[str, Any]) -> Checkpoint:
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in obj["model"].items()}
    return Checkpoint(ModelMeta.from_dict(obj["meta"]), state, dict(obj.get("extra", {})))


def export_for_inference(src: Path | str, dst: Path | str, half: bool = True) -> None:
    """Keep only what inference needs (meta + weights, fp16 if `half`): a shippable file.

    Training state (optimizer, RNG, history) is dropped; the metrics stay as a record.
    """
    ckpt = load_checkpoint(src)
    extra = {k: v for k, v in ckpt.extra.items() if k in ("step", "metrics")}
    save_checkpoint(dst, ckpt.state_dict, ckpt.meta, extra, half=half)
