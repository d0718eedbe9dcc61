"""Tiled vs untiled inference on large synthetic mosaics: segm/bbox AP and images/s.

The demo model (trained on 128 px scenes) runs on mosaics of grid x grid such scenes,
three ways: untiled (the model shrinks the mosaic to 128 px), tiled (128 px tiles,
overlap 0.2) and tiled plus a full-image pass. Ground truth is exact (the scenes are
generated), scoring is pycocotools COCOeval. Usage:

  python benchmarks/bench_tiling.py [--grid 4] [--count 4] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mrcnn_cli.detections import Detections
from mrcnn_cli.evaluation.coco_io import quiet_coco
from mrcnn_cli.evaluation.metrics import evaluate_results
from mrcnn_cli.segmenter import Segmenter
from mrcnn_cli.tiling import segment_tiled, tile_windows
from mrcnn_cli.train.mosaic import mosaic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=4, help="scenes per mosaic side")
    parser.add_argument("--count", type=int, default=4, help="mosaics")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, gt = mosaic_dataset(args.seed, args.count, args.grid)
    coco_gt = quiet_coco(gt)
    max_det = 100 * max(1, args.grid * args.grid // 4)  # a mosaic holds up to 4 per scene
    segmenter = Segmenter("demo", device=args.device, score_thr=0.05)

    def fn(ims: Sequence[np.ndarray]) -> list[Detections]:
        return segmenter.predict(ims, batch_size=len(ims))

    fn([images[0][:128, :128]])  # warm-up
    side = images[0].shape[0]
    tiles = len(tile_windows(side, side, args.tile, args.overlap))
    print(f"{args.count} mosaics of {args.grid}x{args.grid} scenes ({side}x{side} px), "
          f"{len(gt['annotations'])} objects; {tiles} tiles of {args.tile} px per mosaic, "
          f"overlap {args.overlap}; device {args.device}, {args.threads} threads")  # fmt: skip
    runs: dict[str, Callable[[np.ndarray], Detections]] = {
        "untiled": lambda im: fn([im])[0],
        "tiled": lambda im: segment_tiled(fn, im, args.tile, args.overlap,
                                          batch_size=args.batch_size, max_det=max_det),
        "tiled+full": lambda im: segment_tiled(fn, im, args.tile, args.overlap, full=True,
                                               batch_size=args.batch_size, max_det=max_det),
    }  # fmt: skip
    print(f"{'mode':<11} {'segm AP':>8} {'AP50':>6} {'bbox AP':>8} {'images/s':>9} {'s/image':>8}")
    for name, run in runs.items():
        results = []
        start = time.perf_counter()
        for image_id, image in enumerate(images, 1):
            results += run(image).to_coco(image_id)
        seconds = time.perf_counter() - start
        segm = evaluate_results(coco_gt, results, "segm")
        bbox = evaluate_results(coco_gt, results, "bbox")
        print(f"{name:<11} {segm.ap:>8.3f} {segm.stats[1]:>6.3f} {bbox.ap:>8.3f} "
              f"{len(images) / seconds:>9.3f} {seconds / len(images):>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
