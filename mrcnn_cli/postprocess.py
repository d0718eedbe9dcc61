"""From raw network output to `Detections`: class filter, then masks pasted in their boxes.

torchvision pastes every 28x28 mask into a full-image float canvas (N x H x W x 4
bytes: 15.6 GB at 4000x3000 with 100 detections). We filter first and paste each mask
only into its own box region, with the same arithmetic (1-pixel padding, box expanded
by (M+2)/M and truncated to integers, bilinear resize, clip to the image), so the
binary masks equal torchvision's `masks > threshold` pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn_cli.errors import MrcnnError


def expanded_int_boxes(boxes: Tensor, mask_size: int, padding: int = 1) -> Tensor:
    """Grow boxes around their centres to cover the padded mask, then truncate to ints."""
    scale = (mask_size + 2 * padding) / mask_size
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)
    return grown.to(torch.int64)


def paste_masks(
    mask_probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> np.ndarray:
    """mask_probs [N, M, M] in box frames -> bool [N, height, width] in the image frame.

    Each mask is resized and thresholded inside its own box on the model's device; the
    crops then cross to the host in one copy (on a GPU, one sync per image, not one per
    detection).
    """
    n = mask_probs.shape[0]
    out = np.zeros((n, height, width), dtype=bool)
    if n == 0:
        return out
    padded = F.pad(mask_probs, (1, 1, 1, 1))
    int_boxes = expanded_int_boxes(boxes, mask_probs.shape[-1]).tolist()
    crops, places = [], []
    for i, (x0, y0, x1, y1) in enumerate(int_boxes):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        cx0, cx1 = max(x0, 0), min(x1 + 1, width)
        cy0, cy1 = max(y0, 0), min(y1 + 1, height)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        resized = F.interpolate(
            padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False
        )[0, 0]
        crops.append((resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > threshold).reshape(-1))
        places.append((i, cy0, cy1, cx0, cx1))
    if not crops:
        return out
    flat = torch.cat(crops).cpu().numpy()
    start = 0
    for i, cy0, cy1, cx0, cx1 in places:
        size = (cy1 - cy0) * (cx1 - cx0)
        out[i, cy0:cy1, cx0:cx1] = flat[start : start + size].reshape(cy1 - cy0, cx1 - cx0)
        start += size
    return out


def _class_lookup(
    class_names: Sequence[str], category_ids: Sequence[int]
) -> tuple[dict[str, int], dict[int, int]]:
    real = [i for i, name in enumerate(class_names) if i > 0 and name != "N/A"]
    by_name = {class_names[i].lower(): i for i in real}
    by_id = {int(category_ids[i]): i for i in real}
    return by_name, by_id


def _label_of(
    entry: str, option: str, class_names: Sequence[str], category_ids: Sequence[int]
) -> int:
    """A class name (any case) or category id -> the model's label index, else a usage error."""
    by_name, by_id = _class_lookup(class_names, category_ids)
    key = entry.strip().lower()
    if key in by_name:
        return by_name[key]
    if key.isdigit() and int(key) in by_id:
        return by_id[int(key)]
    known = ", ".join(n for n in class_names[1:] if n != "N/A")
    raise MrcnnError(f"{option}: unknown class {entry!r}; this model knows: {known}")


def resolve_class_filter(
    requested: Sequence[str] | None, class_names: Sequence[str], category_ids: Sequence[int]
) -> frozenset[int] | None:
    """Names or category ids from `--classes` -> the model's label indices.

    Unknown entries are a usage error that lists what the model knows.
    """
    if not requested:
        return None
    return frozenset(_label_of(e, "--classes", class_names, category_ids) for e in requested)


def resolve_class_thresholds(
    requested: Sequence[tuple[str, float]] | None,
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> dict[int, float]:
    """`--class-thr` entries (names or category ids) -> {model label index: threshold}."""
    out: dict[int, float] = {}
    for entry, thr in requested or ():
        label = _label_of(entry, "--class-thr", class_names, category_ids)
        if label in out:
            raise MrcnnError(f"--class-thr: {entry!r} names a class given twice")
        out[label] = float(thr)
    return out


def per_class_score_cut(
    roi_heads: torch.nn.Module,
    thresholds: dict[int, float],
    default: float,
    max_det: int,
    num_labels: int,
) -> None:
    """Make `roi_heads` keep, per image, the `max_det` best detections whose score is above
    their own class's threshold (`default` for the others), before the mask head runs.

    torchvision's `postprocess_detections` applies one threshold, then NMS, then keeps the
    top `detections_per_img`; cutting per class after that could keep fewer than
    `max_det` where more pass. So the model is run with the lowest threshold and no top-k
    (its `score_thresh` is set by the caller), and the per-class cut and the top-k are
    done here, on the score-sorted list NMS returns: the same rule, one threshold per class.
    """
    original = roi_heads.postprocess_detections
    table = torch.full((num_labels,), float(default))
    for label, thr in thresholds.items():
        table[label] = thr

    def postprocess(class_logits, box_regression, proposals, image_shapes):  # noqa: ANN001
        saved = roi_heads.detections_per_img
        roi_heads.detections_per_img = None  # keep[:None]: every detection NMS leaves
        try:
            boxes, scores, labels = original(class_logits, box_regression, proposals, image_shapes)
        finally:
            roi_heads.detections_per_img = saved
        out_boxes, out_scores, out_labels = [], [], []
        for b, s, lab in zip(boxes, scores, labels):
            keep = torch.where(s > table.to(s.device)[lab])[0][:max_det]
            out_boxes.append(b[keep])
            out_scores.append(s[keep])
            out_labels.append(lab[keep])
        return out_boxes, out_scores, out_labels

    roi_heads.postprocess_detections = postprocess
