"""mrcnn: batch instance segmentation with Mask R-CNN, from the shell and from Python.

    >>> from mrcnn_cli import Segmenter, annotate
    >>> seg = Segmenter(model="demo")
    >>> dets = seg("photo.jpg")                  # Detections: boxes, scores, names, masks
    >>> preview = annotate(rgb, dets)            # an RGB array with the masks drawn
    >>> dets.to_coco(image_id=1)                 # COCO results entries (RLE masks)

Everything is imported on first use, so `import mrcnn_cli` (and `mrcnn --help`) stays
free of torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "Segmenter": "mrcnn_cli.segmenter",
    "SegmentationError": "mrcnn_cli.segmenter",
    "Detections": "mrcnn_cli.detections",
    "annotate": "mrcnn_cli.writers.overlay",
    "segment": "mrcnn_cli.api",
    "segment_video": "mrcnn_cli.api",
    "evaluate": "mrcnn_cli.api",
    "ModelConfig": "mrcnn_cli.config",
    "SegmentConfig": "mrcnn_cli.config",
    "VideoConfig": "mrcnn_cli.config",
    "EvalConfig": "mrcnn_cli.config",
    "OverlayStyle": "mrcnn_cli.config",
    "RunSummary": "mrcnn_cli.progress",
    "ProgressListener": "mrcnn_cli.progress",
    "FailedItem": "mrcnn_cli.errors",
    "MrcnnError": "mrcnn_cli.errors",
    "Tracker": "mrcnn_cli.tracking",
    "TrackSettings": "mrcnn_cli.config",
}
__all__ = [
    "Detections",
    "EvalConfig",
    "FailedItem",
    "ModelConfig",
    "MrcnnError",
    "OverlayStyle",
    "ProgressListener",
    "RunSummary",
    "SegmentConfig",
    "SegmentationError",
    "Segmenter",
    "TrackSettings",
    "Tracker",
    "VideoConfig",
    "__version__",
    "annotate",
    "evaluate",
    "segment",
    "segment_video",
]

if TYPE_CHECKING:
    from mrcnn_cli.api import evaluate, segment, segment_video
    from mrcnn_cli.config import (
        EvalConfig,
        ModelConfig,
        OverlayStyle,
        SegmentConfig,
        TrackSettings,
        VideoConfig,
    )
    from mrcnn_cli.detections import Detections
    from mrcnn_cli.errors import FailedItem, MrcnnError
    from mrcnn_cli.progress import ProgressListener, RunSummary
    from mrcnn_cli.segmenter import SegmentationError, Segmenter
    from mrcnn_cli.tracking import Tracker
    from mrcnn_cli.writers.overlay import annotate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mrcnn_cli' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
