"""The dense layers of a torchvision Mask R-CNN compiled by OpenVINO; the rest stays torch.

Why: on a CPU, OpenVINO's convolutions beat torch eager (measured on this project's
2-core machine: backbone+FPN 1.3-1.9x at f32, ~2x against torch bf16 at bf16). Whole-
model conversion fails (torchvision's outputs are lists of dicts), so we convert the
dense parts, each with dynamic shapes (one compile serves every image size):

- the backbone + FPN (image batch -> the FPN levels),
- the RPN head's convolutions (FPN levels -> objectness and box deltas per level),
- the mask head and mask predictor (pooled RoIs -> mask logits).

The box head (two fc layers + predictor, 1000 RoIs per image) is converted too but only
swapped in at bf16: at f32 OpenVINO does not beat torch on it (0.10 s vs 0.08 s on a
quiet 2-core machine), at bf16 it does (0.03 s; torch's fp32 box head is what runs
otherwise, as the torch parts stay fp32 under this backend).

They are swapped into the model as `nn.Module`s with the same call signatures, so the
transform, anchors, proposal NMS, box decoding and our mask paste are torchvision's
code, in fp32, unchanged. RoIAlign is the same arithmetic laid out for a CPU
(`gather_roi_align.py`: row gathers over channels-last features, bf16 rows at bf16) and
the box stage's NMS stops at 100 kept (`topk_nms.py`). Numbers differ from torch by
rounding only (README "Backends" has the measured effect).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mrcnn_cli.models.gather_roi_align import gather_roi_align
from mrcnn_cli.models.openvino_cache import (
    cache_root,
    entry_key,
    read_entry,
    remove_entry,
    write_entry,
)
from mrcnn_cli.models.roi_ops import output_side
from mrcnn_cli.models.topk_nms import install_top_k_nms

log = logging.getLogger("mrcnn_cli.openvino")

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
ROWS_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}  # RoIAlign's gathered rows
_EXAMPLE_SIZE = (320, 320)  # traced with this; every size works (dynamic H, W)
_EXAMPLE_ROIS = 4
compile_count = 0  # compiles done by this process (the tests check sizes do not recompile)


class _Compiled:
    """A compiled OpenVINO model with one infer request; calls are serialised by a lock."""

    def __init__(self, compiled: Any) -> None:
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        arrays = {i: t.detach().float().contiguous().cpu().numpy() for i, t in enumerate(inputs)}
        with self.lock:
            result = self.request.infer(arrays, share_inputs=True, share_outputs=False)
        return [torch.from_numpy(a) for a in result.to_tuple()]


class OVBackbone(nn.Module):
    """Backbone + FPN: images [N, 3, H, W] -> OrderedDict of the FPN levels."""

    def __init__(self, run: _Compiled, names: Sequence[str], out_channels: int) -> None:
        super().__init__()
        self.run, self.names, self.out_channels = run, list(names), out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.run([x])))


class OVRPNHead(nn.Module):
    """RPNHead: list of levels -> (objectness per level, box deltas per level)."""

    def __init__(self, run: _Compiled) -> None:
        super().__init__()
        self.run = run

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        out = self.run(x)
        return out[: len(x)], out[len(x) :]


class OVMaskHead(nn.Module):
    """Mask head followed by the mask predictor: pooled RoIs -> mask logits."""

    def __init__(self, run: _Compiled, num_classes: int, upscale: int) -> None:
        super().__init__()
        self.run, self.num_classes, self.upscale = run, num_classes, upscale

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:  # no detections: nothing to run
            h, w = x.shape[-2] * self.upscale, x.shape[-1] * self.upscale
            return x.new_zeros((0, self.num_classes, h, w), dtype=torch.float32)
        return self.run([x])[0]


class OVBoxHead(nn.Module):
    """Box head followed by the box predictor: pooled RoIs -> (class logits, box deltas).

    Installed as `box_head`, with `box_predictor` a `PassThrough`."""

    def __init__(self, run: _Compiled, num_classes: int) -> None:
        super().__init__()
        self.run, self.num_classes = run, num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] == 0:
            empty = x.new_zeros((0, self.num_classes), dtype=torch.float32)
            return empty, x.new_zeros((0, 4 * self.num_classes), dtype=torch.float32)
        logits, deltas = self.run([x])
        return logits, deltas


class PassThrough(nn.Module):
    """Stands in for a predictor whose work the OpenVINO module before it already did."""

    def forward(self, x: Any) -> Any:
        return x


class _RPNConvs(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *levels: Tensor) -> tuple[Tensor, ...]:
        logits, deltas = self.head(list(levels))
        return (*logits, *deltas)


class _HeadAndPredictor(nn.Module):
    def __init__(self, head: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x: Tensor) -> Any:
        return self.predictor(self.head(x))


def openvino_version() -> str:
    import openvino

    return str(openvino.__version__)


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    heads = model.roi_heads
    return {
        "backbone": model.backbone,
        "rpn_head": _RPNConvs(model.rpn.head),
        "mask_head": _HeadAndPredictor(heads.mask_head, heads.mask_predictor),
        "box_head": _HeadAndPredictor(heads.box_head, heads.box_predictor),
    }


def _mask_roi_size(model: nn.Module) -> int:
    return output_side(model.roi_heads.mask_roi_pool)


def _box_roi_size(model: nn.Module) -> int:
    return output_side(model.roi_heads.box_roi_pool)


def parts_in_use(precision: str) -> tuple[str, ...]:
    """The parts swapped in at this precision (the box head gains at bf16 only)."""
    dense = ("backbone", "rpn_head", "mask_head")
    return (*dense, "box_head") if precision == "bf16" else dense


@torch.inference_mode(False)
def _convert(model: nn.Module, folder: Path) -> dict[str, Any]:
    """Convert the three parts into `folder`; return what rebuilding the wrappers needs."""
    import openvino as ov

    parts = _parts(model)
    channels = int(model.backbone.out_channels)
    roi, box_roi = _mask_roi_size(model), _box_roi_size(model)
    with torch.no_grad():
        image = torch.rand(1, 3, *_EXAMPLE_SIZE)
        levels = parts["backbone"](image)
        rois = torch.rand(_EXAMPLE_ROIS, channels, roi, roi)
        masks = parts["mask_head"](rois)
        box_rois = torch.rand(_EXAMPLE_ROIS, channels, box_roi, box_roi)
        logits, _ = parts["box_head"](box_rois)
    examples = {
        "backbone": (image, [(-1, 3, -1, -1)]),
        "rpn_head": (tuple(levels.values()), [(-1, channels, -1, -1)] * len(levels)),
        "mask_head": (rois, [(-1, channels, roi, roi)]),
        "box_head": (box_rois, [(-1, channels, box_roi, box_roi)]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about torchvision's shape checks
        for name, (example, shapes) in examples.items():
            converted = ov.convert_model(parts[name], example_input=example, input=shapes)
            ov.save_model(converted, folder / f"{name}.xml", compress_to_fp16=False)
    return {
        "levels": list(levels.keys()),
        "out_channels": channels,
        "num_classes": int(masks.shape[1]),
        "box_classes": int(logits.shape[1]),
        "upscale": int(masks.shape[-1] // roi),
    }


def _load_or_convert(model: nn.Module, root: Path) -> tuple[Path, dict[str, Any]]:
    inputs = {
        "image": [-1, 3, -1, -1],
        "mask_rois": _mask_roi_size(model),
        "box_rois": _box_roi_size(model),
    }
    folder = root / entry_key(_parts(model), inputs, openvino_version())
    if folder.exists():
        try:
            return folder, read_entry(folder)
        except Exception as exc:  # corrupt or partial: rebuild it
            log.warning("OpenVINO cache entry %s is unreadable (%s); converting again", folder, exc)
            remove_entry(folder)
    log.info("converting the model for OpenVINO (once; cached in %s)", root)
    write_entry(folder, lambda tmp: _convert(model, tmp))
    return folder, read_entry(folder)


def compile_config(precision: str, threads: int) -> dict[str, Any]:
    """Compile settings: the precision asked for (OpenVINO would pick bf16 by itself on
    avx512_bf16 CPUs), latency mode with one stream, and torch's thread count, so the
    two runtimes share the cores the same way."""
    if precision not in OV_PRECISION:
        raise ValueError(f"OpenVINO runs fp32 or bf16, not {precision}")
    return {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": max(int(threads), 1),
    }


def _compile(core: Any, path: Path, config: dict[str, Any]) -> _Compiled:
    global compile_count
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    compile_count += 1
    return _Compiled(compiled)


def install_openvino(
    model: nn.Module, precision: str, threads: int, root: Path | None = None
) -> Path:
    """Swap the dense parts of `model` (a torchvision MaskRCNN on the CPU, eval mode) for
    OpenVINO-compiled ones, converting on the first use of these weights and reading the
    cached conversion afterwards. Nothing is swapped unless every part compiles. Returns
    the cache entry's folder.
    """
    import openvino as ov

    folder, meta = _load_or_convert(model, root or cache_root())
    core = ov.Core()
    config = compile_config(precision, threads)
    names = parts_in_use(precision)
    try:
        runs = {name: _compile(core, folder / f"{name}.xml", config) for name in names}
    except Exception as exc:  # a stale entry that read back but does not compile
        log.warning("OpenVINO cache entry %s does not compile (%s); converting again", folder, exc)
        remove_entry(folder)
        folder, meta = _load_or_convert(model, root or cache_root())
        runs = {name: _compile(core, folder / f"{name}.xml", config) for name in names}
    heads = model.roi_heads
    model.backbone = OVBackbone(runs["backbone"], meta["levels"], meta["out_channels"])
    model.rpn.head = OVRPNHead(runs["rpn_head"])
    heads.mask_head = OVMaskHead(runs["mask_head"], meta["num_classes"], meta["upscale"])
    heads.mask_predictor = PassThrough()
    if "box_head" in runs:
        heads.box_head = OVBoxHead(runs["box_head"], meta["box_classes"])
        heads.box_predictor = PassThrough()
    install_top_k_nms(heads)  # the same boxes, fewer candidates looked at (topk_nms.py)
    gather_roi_align(heads, ROWS_DTYPE[precision])  # RoIAlign as row gathers
    return folder
