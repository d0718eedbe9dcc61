"""Run settings as frozen dataclasses, free of torch so the CLI can build them cheaply.

A config says what to do; the library does it. `validate()` checks what can be checked
without a model (ranges, names); `output_settings()` is the part that changes an
output's bytes, hashed by the journal so that a rerun with other values redoes the work.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from mrcnn_cli.errors import MrcnnError

# Same default as Pillow's decompression-bomb limit: about 13k x 13k.
DEFAULT_MAX_PIXELS = 178_956_970
DEFAULT_MODEL = "maskrcnn_resnet50_fpn"

IMAGE_SAVE_KINDS = (
    "overlay", "masks", "coco", "coco-dataset", "yolo", "labelme", "cvat", "labelstudio",
    "csv", "crops", "report",
)  # fmt: skip
# Kinds whose dataset holds the input images (links or copies) beside the labels.
DATASET_IMAGE_KINDS = frozenset({"yolo", "coco-dataset"})
LABELSTUDIO_PREFIX = "/data/local-files/?d="  # Label Studio's local-files serving URL
VIDEO_SAVE_KINDS = ("video", "masks", "coco", "mot", "report")
# Kinds that change no per-image or per-video file: left out of the settings hash, so
# adding or dropping them redoes nothing (a missing thumbnail redoes its image: see
# engine.outputs_exist).
RUN_LEVEL_KINDS = frozenset({"report", "labelstudio"})
IOU_TYPES = ("bbox", "segm")
ROI_OPS = ("align", "pool")
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
BACKEND_ENV = "MRCNN_BACKEND"  # overrides the default backend (the tests pin torch with it)

MaskFormat = Literal["instance", "binary", "semantic"]
MASK_FORMATS: tuple[str, ...] = get_args(MaskFormat)


@dataclass(frozen=True)
class OverlayStyle:
    """How an overlay looks; None sizes are picked from the image size."""

    alpha: float = 0.5
    line_width: int | None = None
    font_scale: float | None = None
    show_boxes: bool = True
    show_labels: bool = True
    show_masks: bool = True


def default_backend() -> str:
    """`auto` (OpenVINO on a CPU, torch on CUDA) unless $MRCNN_BACKEND names another."""
    return os.environ.get(BACKEND_ENV, "").strip() or "auto"


@dataclass(frozen=True)
class ModelConfig:
    """Which network, where, and the detection settings: shared by every front end."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"  # fp32 (exact, torchvision's numbers) | bf16 | fp16 (CUDA)
    channels_last: bool | None = None  # None: on for bf16/fp16, off for exact fp32
    score_thr: float = 0.5
    max_det: int = 100
    classes: tuple[str, ...] | None = None
    # per-class score thresholds, (class name or id, threshold) sorted; others: score_thr
    class_thr: tuple[tuple[str, float], ...] | None = None
    mask_thr: float = 0.5
    roi_op: str | None = None
    tile: int | None = None  # sliced inference: tiles of this many pixels (None: whole image)
    tile_overlap: float = 0.2
    tile_full: bool = False  # with tiles, also the whole image (for large objects)
    random_init_seed: int | None = None  # tests and benchmarks: seeded random weights
    backend: str = field(default_factory=default_backend)  # auto | torch (exact) | openvino

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise MrcnnError(
                f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        if not 0.0 <= self.score_thr <= 1.0 or not 0.0 <= self.mask_thr <= 1.0:
            raise MrcnnError("--score-thr and --mask-thr must be between 0 and 1")
        if self.max_det < 1:
            raise MrcnnError("--max-det must be at least 1")
        for name, thr in self.class_thr or ():
            if not 0.0 <= thr <= 1.0:
                raise MrcnnError(f"--class-thr: {name}={thr} is not between 0 and 1")
        if self.precision not in PRECISIONS:
            raise MrcnnError(
                f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.tile is not None and self.tile < 16:
            raise MrcnnError("--tile must be at least 16 pixels")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise MrcnnError("--tile-overlap must be at least 0 and below 1")
        if self.tile_full and self.tile is None:
            raise MrcnnError("--tile-full adds a whole-image pass to tiles: give --tile SIZE")
        if self.roi_op is not None and self.roi_op not in ROI_OPS:
            raise MrcnnError(f"--roi-op must be one of {', '.join(ROI_OPS)}, not {self.roi_op!r}")

    def output_settings(self) -> dict[str, Any]:
        """Everything but the device: the same model on another device gives the same files
        (up to the precision and the backend, which are part of the settings; `auto` is
        recorded as asked, so switching between `auto` and an explicit backend redoes)."""
        settings = asdict(self)
        settings.pop("device")
        settings["channels_last"] = self.channels_last_in_use
        if not self.class_thr:  # absent, so runs from before the option keep their hash
            settings.pop("class_thr")
        if self.tile is None:  # tile settings change nothing without tiles
            settings.pop("tile_overlap")
            settings.pop("tile_full")
        return settings

    @property
    def lowest_score_thr(self) -> float:
        """The model's own score cut: the lowest threshold any class has."""
        return min([self.score_thr, *(thr for _, thr in self.class_thr or ())])

    @property
    def channels_last_in_use(self) -> bool:
        """Channels-last backbone: as asked, else on for the reduced precisions only."""
        if self.channels_last is not None:
            return self.channels_last
        return self.precision != "fp32"


def parse_class_thresholds(value: str | None) -> tuple[tuple[str, float], ...] | None:
    """`person=0.7,car=0.3` -> (('car', 0.3), ('person', 0.7)); a bad entry is a MrcnnError.

    Names (or category ids) are checked against the model when it is loaded.
    """
    if value is None or not value.strip():
        return None
    found: dict[str, float] = {}
    for entry in (part.strip() for part in value.split(",")):
        name, sep, number = entry.rpartition("=")
        name = name.strip()
        if not entry or not sep or not name:
            raise MrcnnError(f"--class-thr: expected NAME=SCORE, got {entry!r}")
        try:
            thr = float(number)
        except ValueError:
            bad = number.strip()
            raise MrcnnError(f"--class-thr: {entry!r}: {bad!r} is not a number") from None
        if not 0.0 <= thr <= 1.0:
            raise MrcnnError(f"--class-thr: {entry!r}: the score must be between 0 and 1")
        if name in found:
            raise MrcnnError(f"--class-thr: {name!r} is given twice")
        found[name] = thr
    return tuple(sorted(found.items()))


def as_class_thresholds(value: Any) -> tuple[tuple[str, float], ...] | None:
    """`{name: thr}`, `"name=thr,..."` or pairs -> the sorted tuple ModelConfig keeps."""
    if value is None or isinstance(value, str):
        return parse_class_thresholds(value)
    pairs = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), float(v)) for k, v in pairs)) or None


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise MrcnnError("--batch-size must be at least 1")


def output_kinds(save: tuple[str, ...]) -> list[str]:
    """The --save kinds that change per-item files, sorted (what the settings hash sees)."""
    return sorted(k for k in save if k not in RUN_LEVEL_KINDS)


def _check_save(save: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not save or set(save) - set(allowed):
        raise MrcnnError(f"--save takes a comma-separated subset of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExportOptions:
    """How the dataset exports are laid out (`--save coco-dataset,yolo,labelstudio`).

    polygons: coco-dataset masks as polygons instead of RLE;
    copy_images: copy the inputs into the datasets instead of linking them;
    val_split: the fraction of images the YOLO data.yaml lists as `val` (0: val is train);
    image_prefix: what Label Studio's `data.image` is: this prefix + the relative path.
    Only `copy_images` changes per-image files (it is in the resume settings); the
    others shape run-level files rebuilt at every run's end.
    """

    polygons: bool = False
    copy_images: bool = False
    val_split: float = 0.0
    image_prefix: str = LABELSTUDIO_PREFIX

    def validate(self) -> None:
        if not 0.0 <= self.val_split < 1.0:
            raise MrcnnError("--val-split must be at least 0 and below 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SegmentConfig:
    """One `mrcnn segment` job: inputs, where the outputs go, and which outputs."""

    inputs: tuple[str, ...]
    out: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int | None = None  # None: the device's default (1 on a CPU, 4 on CUDA)
    save: tuple[str, ...] = ("overlay", "coco")
    mask_format: str = "instance"
    ann: Path | None = None
    overwrite: bool = False
    workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    overlay_style: OverlayStyle = field(default_factory=OverlayStyle)
    track: TrackSettings | None = None  # for the videos among the inputs
    export: ExportOptions = field(default_factory=ExportOptions)

    def validate(self) -> None:
        self.model.validate()
        _check_save(self.save, IMAGE_SAVE_KINDS)
        self.export.validate()
        if self.mask_format not in MASK_FORMATS:
            raise MrcnnError(f"--mask-format must be one of {', '.join(MASK_FORMATS)}")
        _check_batch_size(self.batch_size)
        if self.workers < 1:
            raise MrcnnError("--workers must be at least 1")

    def output_settings(self) -> dict[str, Any]:
        """What changes an image's outputs (model files are fingerprinted by the caller)."""
        settings = {
            "model": self.model.output_settings(),
            "save": output_kinds(self.save),
            "mask_format": self.mask_format,
            "style": asdict(self.overlay_style),
        }
        if self.export.copy_images and DATASET_IMAGE_KINDS & set(self.save):
            settings["copy_images"] = True  # absent otherwise: older runs keep their hash
        return settings

    def video_config(self) -> VideoConfig:
        """Videos met by `mrcnn segment`: overlays become the MP4, masks and COCO per frame
        (the labelling and table formats are for images; videos get none of them); with
        --track, also the MOT file."""
        kinds = {"overlay": "video", "masks": "masks", "coco": "coco"}
        save = tuple(kinds[k] for k in self.save if k in kinds) or ("video",)
        return VideoConfig(
            out=self.out,
            model=self.model,
            batch_size=self.batch_size,
            save=save + (("mot",) if self.track is not None else ()),
            overwrite=self.overwrite,
            overlay_style=self.overlay_style,
            track=self.track,
        )


DEFAULT_CRF = 20
TRACK_METHODS = ("bytetrack", "ocsort")


@dataclass(frozen=True)
class TrackSettings:
    """ByteTrack's knobs, in the units users think in. Part of a run's resume settings.

    buffer: model frames a lost track is kept before its id is retired;
    new_track_thr: the score a detection needs to start a track;
    high_thr: detections at or above it are matched first (the rest in a second round);
    match_iou: the least box IoU between a track's predicted box and a detection;
    min_frames: consecutive matched model frames before a track gets its id;
    duplicate_iou: a detection overlapping a higher-scoring one (of another class) by
    more box IoU than this takes no track (1: off);
    relink: the colour similarity (0-1) at which a new track takes the id of a lost track
    of its class (0: off; see tracking.py).
    """

    buffer: int = 30
    new_track_thr: float = 0.8
    high_thr: float = 0.5
    match_iou: float = 0.1
    min_frames: int = 1
    method: str = "bytetrack"
    duplicate_iou: float = 0.7
    relink: float = 0.7

    def validate(self) -> None:
        if self.method not in TRACK_METHODS:
            raise MrcnnError(
                f"--tracker must be one of {', '.join(TRACK_METHODS)}, not {self.method!r}"
            )
        if self.buffer < 0:
            raise MrcnnError("--track-buffer must be 0 or more (model frames)")
        if self.min_frames < 1:
            raise MrcnnError("the track's minimum frames must be at least 1")
        for name in ("new_track_thr", "high_thr", "match_iou", "duplicate_iou", "relink"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MrcnnError(f"tracking setting {name} must be between 0 and 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VideoConfig:
    """One `mrcnn video` job (and the video part of `mrcnn segment`)."""

    inputs: tuple[str, ...] = ()
    out: Path = Path("results")
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int | None = None
    stride: int = 1
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None
    save: tuple[str, ...] = ("video",)
    overwrite: bool = False
    codec: str | None = None
    crf: int = DEFAULT_CRF
    overlay_style: OverlayStyle = field(default_factory=OverlayStyle)
    track: TrackSettings | None = None  # None: every frame on its own, no ids
    trail: int = 0  # with tracking: draw each track's last `trail` centres
    fps: float | None = None  # frames/s of folders of frames (None: 30); videos keep theirs

    def validate(self) -> None:
        self.model.validate()
        _check_save(self.save, VIDEO_SAVE_KINDS)
        if self.track is not None:
            self.track.validate()
        elif "mot" in self.save or self.trail:
            raise MrcnnError("--save mot and --trail need --track")
        if self.trail < 0:
            raise MrcnnError("--trail must be 0 or more")
        _check_batch_size(self.batch_size)
        if self.stride < 1:
            raise MrcnnError("--stride must be at least 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise MrcnnError("--max-frames must be at least 1")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise MrcnnError("--start must be >= 0 and --end greater than --start")
        if not 0 <= self.crf <= 51:
            raise MrcnnError("--crf must be between 0 and 51")
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise MrcnnError("--fps must be more than 0 and at most 1000")

    def output_settings(self) -> dict[str, Any]:
        """What changes a video's outputs: a rerun with other values redoes the video."""
        return {
            "model": self.model.output_settings(),
            "stride": self.stride,
            "start": self.start,
            "end": self.end,
            "max_frames": self.max_frames,
            "save": output_kinds(self.save),
            "codec": self.codec,
            "crf": self.crf,
            "style": asdict(self.overlay_style),
            "track": None if self.track is None else self.track.as_dict(),
            "trail": self.trail,
        }


EVAL_SCORE_THR = 0.05  # torchvision's and detectron2's setting for COCO evaluation
EVAL_MAX_DET = 100  # COCOeval's largest maxDets: more detections are never scored


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation; `model` set means model mode, else the `pred` results file."""

    ann: Path
    out: Path
    pred: Path | None = None
    images: Path | None = None
    iou_types: tuple[str, ...] = IOU_TYPES
    classes: tuple[str, ...] | None = None
    max_images: int | None = None
    gallery: int = 8
    gallery_score_thr: float = 0.5
    plots: bool = True
    top_classes: int = 6
    model: ModelConfig | None = None
    batch_size: int | None = None
    workers: int = 2
    overwrite: bool = False

    def validate(self) -> None:
        if self.pred is not None and self.model is not None:
            raise MrcnnError("give --pred (score a results file) or a model, not both")
        if self.pred is None and self.model is None:
            raise MrcnnError(
                "nothing to evaluate: give --pred FILE, or --images DIR to run a model"
            )
        if self.model is not None:
            self.model.validate()
            if self.images is None:
                raise MrcnnError("running a model needs --images DIR (the annotated images)")
        bad = [t for t in self.iou_types if t not in IOU_TYPES]
        if bad or not self.iou_types:
            raise MrcnnError("--iou-type must be bbox, segm or both")
        if self.max_images is not None and self.max_images < 1:
            raise MrcnnError("--max-images must be at least 1")
        if not 0.0 <= self.gallery_score_thr <= 1.0:
            raise MrcnnError("--gallery-thr must be between 0 and 1")
        _check_batch_size(self.batch_size)
