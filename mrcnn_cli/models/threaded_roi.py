"""RoI pooling across CPU cores, and under bf16 autocast, with unchanged results.

torchvision's CPU `roi_align` (and `roi_pool`) loop over the RoIs on one core: with
1000 proposals per image the box branch waits on it while the other cores idle. Each
RoI's features depend only on that RoI, so splitting every image's boxes into chunks,
pooling the chunks in threads (the op releases the GIL) and putting the rows back in
order gives exactly the same tensor, faster.

The CPU kernels have no bfloat16 version and torchvision registers no CPU autocast rule
for them, so features made under bf16 autocast are pooled in fp32 (what CUDA's autocast
rule does too); the heads after the pooler run under autocast again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from mrcnn_cli.models.gather_roi_align import GatherRoIAlign

_MIN_ROIS_PER_CHUNK = 64  # below this, threads cost more than they save


class ThreadedRoIPool(nn.Module):
    """Wraps a multi-scale RoI pooler (torchvision's or ours) to run in `threads` chunks."""

    def __init__(self, pooler: nn.Module, threads: int) -> None:
        super().__init__()
        self.pooler = pooler
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="roi")

    @property
    def output_size(self):  # what set_roi_op and the heads read from a pooler
        return self.pooler.output_size

    @property
    def featmap_names(self) -> list[str]:
        return self.pooler.featmap_names

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        if any(f.dtype != torch.float32 for f in x.values()):
            x = {k: v.float() for k, v in x.items()}
            boxes = [b.float() for b in boxes]
        total = sum(len(b) for b in boxes)
        chunks = min(self.threads, total // _MIN_ROIS_PER_CHUNK)
        if chunks < 2:
            return self.pooler(x, boxes, image_shapes)
        # chunk c holds, for every image, that image's c-th slice of boxes
        splits = [torch.tensor_split(torch.arange(len(b)), chunks) for b in boxes]
        parts = [[b[s[c]] for b, s in zip(boxes, splits)] for c in range(chunks)]
        pooled = list(self._executor.map(lambda p: self.pooler(x, p, image_shapes), parts))
        rows = []
        offsets = [0] * chunks
        for image_splits in splits:
            for c in range(chunks):
                n = len(image_splits[c])
                rows.append(pooled[c][offsets[c] : offsets[c] + n])
                offsets[c] += n
        return torch.cat(rows)


def thread_roi_pooling(model: nn.Module, threads: int) -> None:
    """Wrap the box and mask RoI poolers of a MaskRCNN in place (inference only); the
    OpenVINO backend's `GatherRoIAlign` is parallel already and is left alone."""
    heads = model.roi_heads
    for attr in ("box_roi_pool", "mask_roi_pool"):
        pooler = getattr(heads, attr, None)
        if pooler is not None and not isinstance(pooler, (ThreadedRoIPool, GatherRoIAlign)):
            setattr(heads, attr, ThreadedRoIPool(pooler, threads))
