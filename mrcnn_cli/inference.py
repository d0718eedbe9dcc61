"""One forward pass over a batch of decoded images, returning `Detections` per image.

The network runs stage by stage (transform, backbone, RPN, RoI heads) exactly as
torchvision's `GeneralizedRCNN.forward` does, but we stop before its full-image mask
pasting and do our own filtered, box-local paste (see postprocess.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes

from mrcnn_cli.detections import Detections
from mrcnn_cli.models import LoadedModel
from mrcnn_cli.postprocess import paste_masks


def to_tensor(image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB uint8 HxWx3 -> CxHxW in [0, 1], converted on the device (less to copy)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
    return t.permute(2, 0, 1).to(dtype).div_(255)


@torch.inference_mode()
def predict(
    loaded: LoadedModel,
    images: Sequence[np.ndarray],
    mask_threshold: float = 0.5,
    keep_labels: frozenset[int] | None = None,
) -> list[Detections]:
    model = loaded.model
    tensors = [to_tensor(im, loaded.device, loaded.dtype) for im in images]
    original_sizes = [(im.shape[0], im.shape[1]) for im in images]
    batch, _ = model.transform(tensors)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    raw, _ = model.roi_heads(features, proposals, batch.image_sizes)
    results = []
    for out, resized, (h, w) in zip(raw, batch.image_sizes, original_sizes):
        boxes = resize_boxes(out["boxes"], resized, (h, w))
        labels = out["labels"]
        keep = torch.ones_like(labels, dtype=torch.bool)
        if keep_labels is not None:
            keep = torch.tensor(
                [int(lab) in keep_labels for lab in labels.tolist()],
                dtype=torch.bool,
                device=labels.device,
            )
        boxes, labels, scores = boxes[keep], labels[keep], out["scores"][keep]
        masks = None
        if "masks" in out:
            masks = paste_masks(out["masks"][keep][:, 0], boxes, h, w, mask_threshold)
        results.append(
            Detections(
                boxes=boxes.float().cpu().numpy(),
                scores=scores.float().cpu().numpy(),
                labels=labels.cpu().numpy(),
                masks=masks,
                class_names=loaded.class_names,
                category_ids=loaded.category_ids,
            )
        )
    return results
