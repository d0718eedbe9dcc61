"""Numeric precision and memory layout of inference: fp32 (exact), bf16, fp16.

fp32 is torchvision's arithmetic, bit for bit (the parity tests pin it). bf16 runs the
network under `torch.autocast` (convolutions and matmuls in bfloat16, the rest in fp32),
which pays on CPUs with avx512_bf16 or AMX and on CUDA; fp16 is CUDA's autocast. Both
change the numbers by rounding, so they are opt-in and measured (README: AP on the demo
model's held-out split). Channels-last memory for the backbone goes with them by default:
it also rounds differently, so the exact fp32 path keeps the default layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mrcnn_cli.config import PRECISIONS
from mrcnn_cli.errors import MrcnnError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bfloat16 kernels (avx512_bf16, AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, a precision the device cannot run fast."""
    if precision not in PRECISIONS:
        raise MrcnnError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise MrcnnError(
            "--precision fp16 (--half) needs a CUDA device; on a CPU use --precision bf16 "
            "where the CPU supports it, else fp32"
        )
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        raise MrcnnError(
            "--precision bf16: this CPU has no native bfloat16 (avx512_bf16 or AMX), where "
            "it runs slower than fp32; use --precision fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MrcnnError("--precision bf16: this GPU has no bfloat16 support; use fp16")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The forward pass's numeric context: nothing for fp32, torch.autocast otherwise."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def fp32_head_outputs(model: nn.Module) -> None:
    """Hand the heads' outputs on in fp32, so box decoding, softmax and the mask sigmoid
    run in full precision under autocast.

    Without this, bf16 logits give scores on a coarse grid (many ties) and the RPN's
    deltas pull anchors and proposals into bf16, whose step is 4 px at 800 px. Done with
    forward hooks, so the module tree (and any state dict) stays as it is.
    """
    heads = (model.rpn.head, model.roi_heads.box_predictor, model.roi_heads.mask_predictor)
    for head in heads:
        if head is not None:
            head.register_forward_hook(lambda _module, _inputs, output: _to_float(output))
