"""From a `--model` string to a ready, eval-mode network on the right device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.architectures import ARCHITECTURES, coco_class_names, get_architecture
from mrcnn_cli.models.bundled import BUNDLED_MODELS, bundled_or_path
from mrcnn_cli.models.checkpoint import (
    ModelMeta,
    checkpoint_from_payload,
    is_mrcnn_checkpoint,
    load_checkpoint,
    read_torch_file,
)
from mrcnn_cli.models.precision import check_precision
from mrcnn_cli.models.roi_ops import ROI_OPS
from mrcnn_cli.models.weights import resolve_weights


@dataclass
class LoadedModel:
    model: MaskRCNN
    meta: ModelMeta
    device: torch.device
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.meta.category_ids


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MrcnnError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MrcnnError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MrcnnError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise MrcnnError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    elif dev.index not in (None, 0):
        raise MrcnnError(f"--device {device}: there is one CPU device; use cpu")
    return dev


def default_batch_size(device: torch.device, requested: int | None = None) -> int:
    """Batching pays on a GPU; on a CPU it only adds padding (measured: batch 1 is faster)."""
    if requested is not None:
        return requested
    return 4 if device.type == "cuda" else 1


def is_model_path(spec: str) -> bool:
    return spec not in ARCHITECTURES and spec not in BUNDLED_MODELS


def load_model(
    spec: str,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    roi_op: str | None = None,
    overrides: dict[str, Any] | None = None,
    random_init_seed: int | None = None,
) -> LoadedModel:
    """Build the model named by `spec` (architecture, bundled name or checkpoint path).

    `overrides` are MaskRCNN settings for this run (box_score_thresh,
    box_detections_per_img, ...). `random_init_seed` skips weights entirely and seeds
    the initialisation: the tests' way to run the COCO code paths with no checkpoint.
    """
    dev = pick_device(device)
    check_precision(precision, dev)
    if roi_op is not None and roi_op not in ROI_OPS:
        raise MrcnnError(f"--roi-op must be one of {', '.join(ROI_OPS)}, not {roi_op!r}")

    meta, state, source = meta_and_state(spec, weights, random_init_seed)
    arch = get_architecture(meta.arch)
    arch_options = dict(meta.arch_options)
    if roi_op is not None:
        arch_options["roi_op"] = roi_op
    settings = {**arch.defaults, **meta.settings, **(overrides or {})}
    if random_init_seed is not None:
        torch.manual_seed(random_init_seed)
    model = arch.build(meta.num_classes, **arch_options, **settings)
    if state is not None:
        _load_state(model, state, source)
    model.eval().to(dev)  # weights stay fp32: reduced precisions run under autocast
    return LoadedModel(model, meta, dev, source, settings, precision)


def meta_and_state(
    spec: str, weights: str | None = None, random_init_seed: int | None = None
) -> tuple[ModelMeta, dict[str, torch.Tensor] | None, str]:
    """What `spec` names: its metadata, its tensors (None for a random init) and source."""
    if weights and spec not in ARCHITECTURES:
        raise MrcnnError(
            f"--weights is for the torchvision architectures ({', '.join(ARCHITECTURES)}); "
            f"--model {spec} carries its own weights"
        )
    spec = bundled_or_path(spec)
    if is_model_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            known = ", ".join([*ARCHITECTURES, *BUNDLED_MODELS])
            raise MrcnnError(f"--model {spec!r}: no such model name or file (names: {known})")
        ckpt = load_checkpoint(path)
        return ckpt.meta, ckpt.state_dict, str(path)

    arch = get_architecture(spec)
    names = coco_class_names()
    coco_meta = ModelMeta(arch.name, names, tuple(range(len(names))))
    if random_init_seed is not None:
        return coco_meta, None, f"random init (seed {random_init_seed})"
    path = resolve_weights(arch, weights)
    obj = read_torch_file(path)
    if is_mrcnn_checkpoint(obj):  # a fine-tuned checkpoint of ours, given via --weights
        ckpt = checkpoint_from_payload(obj)
        return ckpt.meta, ckpt.state_dict, str(path)
    if not isinstance(obj, dict):
        raise MrcnnError(f"{path} does not hold a state dict")
    return coco_meta, obj, str(path)


def _load_state(model: MaskRCNN, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MrcnnError(f"weights in {source} do not fit the architecture: {first}") from exc
