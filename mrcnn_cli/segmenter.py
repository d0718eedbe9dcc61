"""`Segmenter`: images in, `Detections` out. The only place that knows the model's call.

It owns everything between a decoded image and its detections: the network (stage by
stage, exactly as torchvision's `GeneralizedRCNN.forward`), the class filter, the mask
threshold and our box-local mask paste (see postprocess.py), batching, and the one
policy for a batch that fails (out of memory or an error in the network): retry image
by image, so one bad image fails alone instead of taking its batch-mates with it.

    >>> from mrcnn_cli import Segmenter
    >>> seg = Segmenter(model="demo", score_thr=0.5)
    >>> dets = seg(rgb)                        # HxWx3 uint8 array, a path, or a PIL image
    >>> [len(d) for d in seg.predict(images, batch_size=4)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from mrcnn_cli.config import DEFAULT_MODEL, ModelConfig, as_class_thresholds
from mrcnn_cli.decode import decode_image
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.backends import apply_backend
from mrcnn_cli.models.loading import LoadedModel, default_batch_size, load_model
from mrcnn_cli.models.precision import autocast, fp32_head_outputs
from mrcnn_cli.models.threaded_roi import thread_roi_pooling
from mrcnn_cli.postprocess import (
    paste_masks,
    per_class_score_cut,
    resolve_class_filter,
    resolve_class_thresholds,
)
from mrcnn_cli.tiling import segment_tiled


class SegmentationError(Exception):
    """The model could not process an image (raised by `Segmenter.predict` and `__call__`)."""


@dataclass(frozen=True)
class ImageError:
    """One image of a batch the model could not process, and why: a value, not a raise."""

    reason: str


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _failure_reason(exc: BaseException) -> str:
    if _is_out_of_memory(exc):
        return f"out of memory in the model ({type(exc).__name__})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"model failed ({type(exc).__name__}{': ' + first[:200] if first else ''})"


def as_rgb(image: Any) -> np.ndarray:
    """An RGB uint8 HxWx3 array from an array, a path or a PIL image."""
    if isinstance(image, (str, Path)):
        return decode_image(image)
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 array, got {array.dtype} {array.shape}")
    return array


class Segmenter:
    """A Mask R-CNN ready to run: `seg(image) -> Detections`.

    `model` is an architecture (`maskrcnn_resnet50_fpn`, `maskrcnn_resnet50_fpn_v2`), a
    bundled name (`demo`) or a checkpoint written by `mrcnn train`. `classes` keeps only
    those classes (names or category ids); `score_thr`, `max_det` and `mask_thr` are
    applied as in torchvision; `class_thr` ({name or id: threshold}) gives classes their
    own score threshold (before the top `max_det` are kept, as torchvision's one is).
    `precision` is fp32 (torchvision's numbers exactly), bf16 (CPUs with
    avx512_bf16/AMX, CUDA) or fp16 (CUDA; `half=True` says the same);
    `channels_last` None follows the precision. `tile` runs each image as overlapping
    tiles of that many pixels at native resolution (small objects in large images; see
    tiling.py), merged back into one set of detections, plus the whole image with
    `tile_full`. `batch_size` None: the device's default (tiles are batched with it).
    `backend` is `torch` (torchvision's numbers exactly), `openvino` (the dense layers
    compiled by OpenVINO: faster on a CPU, same up to rounding) or `auto` (OpenVINO on
    a CPU, torch on CUDA); None: $MRCNN_BACKEND, else `auto`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        weights: str | None = None,
        device: str = "auto",
        score_thr: float = 0.5,
        max_det: int = 100,
        classes: Sequence[str | int] | None = None,
        class_thr: Mapping[str | int, float] | None = None,
        mask_thr: float = 0.5,
        precision: str = "fp32",
        channels_last: bool | None = None,
        half: bool = False,
        roi_op: str | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.2,
        tile_full: bool = False,
        batch_size: int | None = None,
        random_init_seed: int | None = None,
        backend: str | None = None,
    ) -> None:
        config = ModelConfig(
            model=model,
            weights=weights,
            device=device,
            precision="fp16" if half else precision,
            channels_last=channels_last,
            score_thr=score_thr,
            max_det=max_det,
            classes=tuple(str(c) for c in classes) if classes else None,
            class_thr=as_class_thresholds(class_thr),
            mask_thr=mask_thr,
            roi_op=roi_op,
            tile=tile,
            tile_overlap=tile_overlap,
            tile_full=tile_full,
            random_init_seed=random_init_seed,
            **({"backend": backend} if backend is not None else {}),
        )
        self._setup(_load(config), config, batch_size)

    @classmethod
    def from_config(cls, config: ModelConfig, batch_size: int | None = None) -> Segmenter:
        """The front ends' way in: a validated `ModelConfig` from the CLI or a job."""
        seg = cls.__new__(cls)
        seg._setup(_load(config), config, batch_size)
        return seg

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, config: ModelConfig | None = None, batch_size: int | None = None
    ) -> Segmenter:
        """Wrap a network that is already built (training evaluates its live model)."""
        seg = cls.__new__(cls)
        config = config or ModelConfig(model=loaded.source or "model")
        seg._setup(loaded, config, batch_size, tune=False)  # leave a training model as it is
        return seg

    def _setup(
        self, loaded: LoadedModel, config: ModelConfig, batch_size: int | None, tune: bool = True
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise MrcnnError("--batch-size must be at least 1")
        self.loaded = loaded
        self.config = config
        self.backend = "torch"
        threads = torch.get_num_threads() if loaded.device.type == "cpu" else 1
        if tune:
            self.backend = apply_backend(loaded, config.backend, config.precision, threads)
        # torch's reduced precisions; under OpenVINO the torch parts stay fp32
        self.torch_precision = config.precision if self.backend == "torch" else "fp32"
        self.channels_last = tune and self.backend == "torch" and config.channels_last_in_use
        if self.channels_last:
            loaded.model.backbone.to(memory_format=torch.channels_last)
        if tune:
            thread_roi_pooling(loaded.model, threads)
            if self.torch_precision != "fp32":
                fp32_head_outputs(loaded.model)
        self.batch_size = default_batch_size(loaded.device, batch_size)
        self.keep_labels = resolve_class_filter(
            config.classes, loaded.class_names, loaded.category_ids
        )
        self.class_thr = resolve_class_thresholds(
            config.class_thr, loaded.class_names, loaded.category_ids
        )
        if self.class_thr and tune:  # a training model (from_loaded) is left as it is
            per_class_score_cut(loaded.model.roi_heads, self.class_thr, config.score_thr,
                                config.max_det, len(loaded.class_names))  # fmt: skip

    # --- what callers read --------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.loaded.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.loaded.category_ids

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def __repr__(self) -> str:
        return (
            f"Segmenter(model={self.config.model!r}, device={str(self.device)!r}, "
            f"precision={self.config.precision!r}, backend={self.backend!r}, "
            f"batch_size={self.batch_size}, "
            f"score_thr={self.config.score_thr})"
        )

    # --- inference ----------------------------------------------------------------
    def __call__(self, image: Any) -> Detections:
        """Detections of one image (array, path or PIL image)."""
        return self.predict([image], batch_size=1)[0]

    def predict(self, images: Sequence[Any], batch_size: int | None = None) -> list[Detections]:
        """Detections of each image, in order, `batch_size` images per forward pass.

        Raises `SegmentationError` if the model cannot process an image.
        """
        return list(self.stream(images, batch_size))

    def stream(self, frames: Iterable[Any], batch_size: int | None = None) -> Iterator[Detections]:
        """Yield each frame's detections as its batch finishes; holds one batch at a time."""
        size = batch_size or self.batch_size
        batch: list[np.ndarray] = []
        for frame in frames:
            batch.append(as_rgb(frame))
            if len(batch) == size:
                yield from self._raising(self.predict_batch(batch))
                batch = []
        if batch:
            yield from self._raising(self.predict_batch(batch))

    def _raising(self, results: list[Detections | ImageError]) -> Iterator[Detections]:
        for result in results:
            if isinstance(result, ImageError):
                raise SegmentationError(result.reason)
            yield result

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Detections | ImageError]:
        """One forward pass over decoded RGB images; a failure comes back as an `ImageError`.

        A batch that fails (out of memory, or an error in the network) is retried image
        by image, so only the images that fail alone are lost. With tiles, each image is
        its own run of tile batches.
        """
        if self.config.tile is not None:
            return [self._tiled(image) for image in images]
        return self._whole_images(images)

    def _tiled(self, image: np.ndarray) -> Detections | ImageError:
        cfg = self.config
        try:
            return segment_tiled(
                lambda tiles: list(self._raising(self._whole_images(tiles))),
                image,
                cfg.tile,
                cfg.tile_overlap,
                cfg.tile_full,
                self.batch_size,
                max_det=cfg.max_det,
            )
        except SegmentationError as exc:
            return ImageError(str(exc))
        except Exception as exc:  # this image fails alone, whatever went wrong in merging
            return ImageError(_failure_reason(exc))

    def _whole_images(self, images: Sequence[np.ndarray]) -> list[Detections | ImageError]:
        try:
            return list(self._forward(images))
        except Exception as exc:  # the retry below decides which images really fail
            if len(images) == 1:
                self._release_memory()
                return [ImageError(_failure_reason(exc))]
        self._release_memory()
        out: list[Detections | ImageError] = []
        for image in images:
            out.extend(self._whole_images([image]))
        return out

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _forward(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """The network stage by stage, then the class filter and the box-local paste."""
        loaded = self.loaded
        model = loaded.model
        batch = _model_input(model.transform, images, loaded.device)
        pixels = batch.tensors
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with autocast(self.torch_precision, loaded.device):
            features = model.backbone(pixels)
            proposals, _ = model.rpn(batch, features)
            raw, _ = model.roi_heads(features, proposals, batch.image_sizes)
        return [
            self._postprocess(out, resized, image.shape[:2])
            for out, resized, image in zip(raw, batch.image_sizes, images)
        ]

    def _postprocess(
        self, out: dict[str, torch.Tensor], resized: tuple[int, int], size: tuple[int, ...]
    ) -> Detections:
        h, w = int(size[0]), int(size[1])
        boxes = resize_boxes(out["boxes"].float(), resized, (h, w))
        labels = out["labels"]
        if self.keep_labels is not None:
            keep = torch.tensor(
                [int(lab) in self.keep_labels for lab in labels.tolist()],
                dtype=torch.bool,
                device=labels.device,
            )
            boxes, labels, out = boxes[keep], labels[keep], {k: v[keep] for k, v in out.items()}
        masks = None
        if "masks" in out:
            probs = out["masks"][:, 0].float()
            exact = self.backend == "torch"  # torchvision's own paste, bit for bit
            masks = paste_masks(probs, boxes, h, w, self.config.mask_thr, exact=exact)
        return Detections(
            boxes=boxes.float().cpu().numpy(),
            scores=out["scores"].float().cpu().numpy(),
            labels=labels.cpu().numpy(),
            masks=masks,
            class_names=self.class_names,
            category_ids=self.category_ids,
        )


def _load(config: ModelConfig) -> LoadedModel:
    config.validate()
    overrides = {
        "box_score_thresh": config.lowest_score_thr,  # per-class cuts above it: segmenter
        "box_detections_per_img": config.max_det,
    }
    return load_model(
        config.model,
        config.weights,
        config.device,
        config.precision,
        config.roi_op,
        overrides,
        config.random_init_seed,
    )


def _model_input(
    transform: GeneralizedRCNNTransform, images: Sequence[np.ndarray], device: torch.device
) -> ImageList:
    """What `transform(images)` gives at inference, bit for bit, in less memory.

    torchvision normalises out of place (`(image - mean) / std`): two more float copies
    of the full-size image (2 x 144 MB for a 4000x3000 photo) beside the one we pass in,
    which then stays alive through the whole network. Here the normalisation is done in
    place on our own float copy, which is dropped as soon as it is resized: the same
    elementwise operations, so the same numbers.
    """
    resized, sizes = [], []
    for image in images:
        pixels = _to_tensor(image, device)
        mean = torch.as_tensor(transform.image_mean, dtype=pixels.dtype, device=device)
        std = torch.as_tensor(transform.image_std, dtype=pixels.dtype, device=device)
        pixels.sub_(mean[:, None, None]).div_(std[:, None, None])
        pixels, _ = transform.resize(pixels, None)
        resized.append(pixels)
        sizes.append((int(pixels.shape[-2]), int(pixels.shape[-1])))
    return ImageList(transform.batch_images(resized, transform.size_divisible), sizes)


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 HxWx3 -> CxHxW in [0, 1], converted on the device (4x less to copy).

    A read-only array (`np.asarray(pil_image)`) is copied: torch cannot wrap it safely.
    """
    array = np.require(image, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    t = torch.from_numpy(array)
    if device.type == "cuda":  # page-locked memory: the copy overlaps the GPU's work
        t = t.pin_memory()
    t = t.to(device, non_blocking=True)
    return t.permute(2, 0, 1).float().div_(255)
