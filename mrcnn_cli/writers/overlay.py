"""Preview JPEGs: translucent masks, outlines, boxes and "label score" tags on the image.

Drawing touches only the pixels around each instance, so a 100-instance overlay on a
large photo costs about what the masks cover, not 100 full-image copies. In crowded
images each label takes the first of a few spots around its box (above, inside the top,
below, ...) that no label placed before it covers (`place_labels`), best score first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.config import OverlayStyle
from mrcnn_cli.detections import Detections
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.masks import paint_order

# Distinct, saturated RGB colours; a class keeps its colour across images and runs.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> tuple[int, int, int]:
    """RGB colour for a model label index (fixed, so a class looks the same everywhere)."""
    return PALETTE[int(label) % len(PALETTE)]


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track: the same object keeps it for the whole clip. Ids step
    through the palette with a stride coprime to its length, so neighbours differ."""
    return PALETTE[(int(track_id) * 7) % len(PALETTE)]


def instance_color(dets: Detections, i: int) -> tuple[int, int, int]:
    """A tracked detection's track colour, otherwise its class colour."""
    if dets.track_ids is not None and dets.track_ids[i] >= 0:
        return track_color(dets.track_ids[i])
    return class_color(dets.labels[i])


def auto_line_width(height: int, width: int) -> int:
    """About 1 px per 500 px of the shorter side: visible on 4K, not blobby on thumbnails."""
    return max(1, round(min(height, width) / 500))


def auto_font_scale(height: int, width: int) -> float:
    """OpenCV font scale growing with the image; 0.5 (about 11 px text) for a 640x480 photo."""
    return max(0.35, min(height, width) / 960)


def _blend_masks(out: np.ndarray, dets: Detections, alpha: float, line_width: int) -> None:
    """Tint every mask and outline it, in place; the best-scoring instance ends on top."""
    masks = dets.masks
    assert masks is not None
    for i in paint_order(dets):
        roi = masks.tight_region(i)
        if roi is None:
            continue
        color = np.array(instance_color(dets, i), np.float32)
        region = out[roi]
        inside = masks.cut(i, *roi)
        tinted = region[inside].astype(np.float32) * (1.0 - alpha) + color * alpha
        region[inside] = np.clip(tinted + 0.5, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(
            inside.astype(np.uint8),
            cv2.RETR_EXTERNAL,
            cv2.CHAIN_APPROX_SIMPLE,
            offset=(roi[1].start, roi[0].start),
        )
        cv2.drawContours(out, contours, -1, instance_color(dets, i), line_width)


def _int_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = np.round(box).astype(int)
    return (
        int(np.clip(x1, 0, width - 1)),
        int(np.clip(y1, 0, height - 1)),
        int(np.clip(x2, 0, width - 1)),
        int(np.clip(y2, 0, height - 1)),
    )


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def label_text(name: str, score: float, track_id: int = -1) -> str:
    """`person 0.93`, or `#17 person 0.93` for a tracked detection."""
    text = f"{name} {score:.2f}"
    return f"#{track_id} {text}" if track_id >= 0 else text


def draw_trails(
    image: np.ndarray, trails: dict[int, Sequence[tuple[float, float]]], line_width: int = 2
) -> None:
    """Each track's recent centres as a polyline in its colour, in place (`--trail`)."""
    for track_id, centres in trails.items():
        if len(centres) < 2:
            continue
        points = np.round(np.asarray(centres, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [points], False, track_color(track_id), line_width, cv2.LINE_AA)


Strip = tuple[int, int, int, int]  # left, top, width, height of a label strip


def label_strip_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    """(width, height) of the filled strip `_draw_label` puts behind `text`."""
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(1, thickness)
    return tw + 2 * pad, th + baseline + 2 * pad


def _label_spots(
    box: tuple[int, int, int, int], size: tuple[int, int], height: int, width: int
) -> list[Strip]:
    """Where a box's label may go, best first, each fully inside the image.

    Above the box, inside its top edge, below it, inside its bottom edge; left-aligned
    with the box, then right-aligned (shifted into the image where it would stick out).
    """
    x1, y1, x2, y2 = box
    w, h = size
    lefts = [x1, x2 - w + 1]
    tops = [y1 - h, y1, y2 + 1, y2 - h + 1]
    spots = []
    for left in lefts:
        left = max(0, min(left, width - w))
        spots += [(left, top, w, h) for top in tops if 0 <= top <= height - h]
    return spots


def _fallback_spot(
    box: tuple[int, int, int, int], size: tuple[int, int], height: int, width: int
) -> Strip:
    """Above the box, or inside its top edge, clamped into the image whatever it covers."""
    w, h = size
    top = box[1] - h if box[1] - h >= 0 else box[1]
    return max(0, min(box[0], width - w)), max(0, min(top, height - h)), w, h


def place_labels(
    boxes: Sequence[tuple[int, int, int, int]],
    sizes: Sequence[tuple[int, int]],
    height: int,
    width: int,
) -> list[Strip]:
    """A strip per box, greedily: each takes its first spot clear of those placed before.

    Boxes come in priority order (the caller passes the best-scoring first, so it keeps
    the natural place above its box); a label with no clear spot left goes to its
    natural place anyway. Pure and cheap: at most 8 candidate spots per label, each
    tested against the placed strips at once with numpy.
    """
    placed = np.zeros((0, 4), np.int64)  # left, top, right, bottom (exclusive)
    strips: list[Strip] = []
    for box, size in zip(boxes, sizes, strict=True):
        choice = _fallback_spot(box, size, height, width)
        for left, top, w, h in _label_spots(box, size, height, width):
            clear = (
                (placed[:, 0] >= left + w)
                | (placed[:, 2] <= left)
                | (placed[:, 1] >= top + h)
                | (placed[:, 3] <= top)
            )
            if clear.all():
                choice = (left, top, w, h)
                break
        left, top, w, h = choice
        placed = np.vstack([placed, [left, top, left + w, top + h]])
        strips.append(choice)
    return strips


def _draw_label(
    out: np.ndarray,
    text: str,
    strip: Strip,
    color: tuple[int, int, int],
    scale: float,
    thickness: int,
) -> None:
    """A filled strip with the text in it, at the spot `place_labels` chose."""
    left, top, w, h = strip
    (_, th), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(1, thickness)
    cv2.rectangle(out, (left, top), (left + w - 1, top + h - 1), color, cv2.FILLED)
    cv2.putText(
        out,
        text,
        (left + pad, top + pad + th),
        _FONT,
        scale,
        _text_color(color),
        thickness,
        cv2.LINE_AA,
    )


def annotate(image: np.ndarray, dets: Detections, style: OverlayStyle | None = None) -> np.ndarray:
    """A new RGB uint8 image, same size as `image`, with `dets` drawn on it (pure).

    >>> preview = annotate(rgb, seg(rgb))            # masks, outlines, boxes, "label score"
    >>> annotate(rgb, dets, OverlayStyle(show_boxes=False, alpha=0.3))
    """
    style = style or OverlayStyle()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if dets.masks is not None and len(dets) and dets.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {dets.masks.shape[1:]}, image is {(height, width)}")
    line_width = style.line_width or auto_line_width(height, width)
    scale = style.font_scale or auto_font_scale(height, width)
    out = np.ascontiguousarray(image).copy()
    if style.show_masks and dets.masks is not None and len(dets):
        _blend_masks(out, dets, style.alpha, line_width)
    order = paint_order(dets)
    boxes = [_int_box(b, height, width) for b in dets.boxes]
    if style.show_boxes:
        for i in order:
            cv2.rectangle(out, boxes[i][:2], boxes[i][2:], instance_color(dets, i), line_width)
    if style.show_labels and len(dets):
        names = dets.names
        thickness = max(1, round(scale * 1.5))
        ids = dets.track_ids if dets.track_ids is not None else np.full(len(dets), -1)
        texts = [label_text(names[i], float(dets.scores[i]), int(ids[i])) for i in range(len(dets))]
        first = order[::-1]  # best score first: it keeps the natural place
        strips = place_labels(
            [boxes[i] for i in first],
            [label_strip_size(texts[i], scale, thickness) for i in first],
            height,
            width,
        )
        strip_of = dict(zip(first.tolist(), strips))
        for i in order:  # painted like the masks: the best label ends on top
            color = instance_color(dets, int(i))
            _draw_label(out, texts[i], strip_of[int(i)], color, scale, thickness)
    return out


def overlay_path(out_dir: Path, rel: PurePosixPath | str) -> Path:
    """`<out_dir>/overlays/<rel with suffix .jpg>`."""
    return output_path(out_dir, "overlays", rel, ".jpg")


def encode_jpeg(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not encode a {image_rgb.shape} image as JPEG")
    return buf.tobytes()


def write_overlay(
    path: Path,
    image_rgb: np.ndarray,
    dets: Detections,
    style: OverlayStyle | None = None,
    quality: int = 90,
) -> None:
    """Draw `dets` on the image and write it as a JPEG, atomically."""
    write_bytes(path, encode_jpeg(annotate(image_rgb, dets, style), quality))
