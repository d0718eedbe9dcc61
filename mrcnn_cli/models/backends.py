"""Which runtime runs the dense layers: torch (exact torchvision) or OpenVINO (CPU, faster).

`auto` is OpenVINO on a CPU and torch on CUDA. Where OpenVINO cannot be imported or
cannot compile the model, `auto` says so once (a logging warning) and uses torch; an
explicit `--backend openvino` that cannot load is a one-line `MrcnnError` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.loading import LoadedModel

log = logging.getLogger("mrcnn_cli.openvino")
_warned: set[str] = set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def openvino_import_error() -> BaseException | None:
    """None if `import openvino` works, else the exception it raised."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return exc
    return None


def requested_backend(requested: str, device: torch.device, precision: str) -> str:
    """`torch` or `openvino` for this device, before anything is loaded."""
    if requested == "torch":
        return "torch"
    if device.type != "cpu":
        if requested == "openvino":
            raise MrcnnError(
                f"--backend openvino runs on the CPU; on {device.type} use --backend torch or auto"
            )
        return "torch"
    if precision not in ("fp32", "bf16"):  # fp16 is refused on a CPU before this
        return "torch"
    return "openvino"


def apply_backend(
    loaded: LoadedModel,
    requested: str,
    precision: str,
    threads: int,
    cache_dir: Path | None = None,
) -> str:
    """Set `loaded.model` up for the backend asked for; return the one in use.

    The model is left untouched when OpenVINO is not used (torch is torchvision's code).
    """
    backend = requested_backend(requested, loaded.device, precision)
    if backend == "torch":
        return backend
    error = openvino_import_error()
    if error is None:
        from mrcnn_cli.models.openvino_backend import install_openvino

        try:
            install_openvino(loaded.model, precision, threads, cache_dir)
            return "openvino"
        except Exception as exc:  # conversion or compilation failed
            error = exc
    if requested == "openvino":
        raise MrcnnError(f"--backend openvino: OpenVINO cannot load ({_first_line(error)})")
    _warn_once(f"OpenVINO unavailable ({_first_line(error)}); using torch (--backend torch)")
    return "torch"
