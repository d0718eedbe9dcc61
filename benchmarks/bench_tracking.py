"""Tracking quality on generated clips with exact ground truth: IDF1, MOTA, ID switches.

Each clip holds shapes the demo model knows, gliding at constant speed, bouncing off
the borders and passing in front of each other (`mrcnn_cli/train/synthetic_video.py`).
Every clip goes through `mrcnn video --track --save mot` (the library call behind it)
with the bundled demo model; the MOT file is scored against the ground truth by the
`trackers` package's TrackEval-parity metrics (CLEAR and Identity, IoU 0.5). Usage:

  python benchmarks/bench_tracking.py [--clips 6] [--frames 90] [--objects 4] [--stride 1]
      [--seed 100] [--relink 0.7] [--duplicate-iou 0.7]   (--relink 0 --duplicate-iou 1: before)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mrcnn_cli.api import segment_video
from mrcnn_cli.config import TrackSettings
from mrcnn_cli.segmenter import Segmenter
from mrcnn_cli.train.synthetic_video import write_clip_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--speed", type=float, nargs=2, default=(1.5, 4.0))
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--buffer", type=int, default=30)
    parser.add_argument("--new-track-thr", type=float, default=TrackSettings.new_track_thr)
    parser.add_argument("--high-thr", type=float, default=TrackSettings.high_thr)
    parser.add_argument("--match-iou", type=float, default=TrackSettings.match_iou)
    parser.add_argument("--min-frames", type=int, default=TrackSettings.min_frames)
    parser.add_argument("--method", default=TrackSettings.method)
    # --duplicate-iou 1 and --relink 0: the tracker as it was before both (the "before")
    parser.add_argument("--duplicate-iou", type=float, default=TrackSettings.duplicate_iou)
    parser.add_argument("--relink", type=float, default=TrackSettings.relink)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()

    from trackers.eval import (
        aggregate_clear_metrics,
        aggregate_identity_metrics,
        evaluate_mot_sequence,
    )

    segmenter = Segmenter(model="demo", device="cpu")
    clears, identities = [], []
    print(f"{'clip':>5} {'IDF1':>6} {'MOTA':>6} {'IDSW':>5} {'FN':>4} {'FP':>4} {'frames/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the clips `mrcnn synth --video --seed SEED` writes
        clips = write_clip_set(root, args.clips, args.frames, args.objects, args.size,
                               tuple(args.speed), args.seed)  # fmt: skip
        for k, (video, truth) in enumerate(clips):
            started = time.perf_counter()
            track = TrackSettings(args.buffer, args.new_track_thr, args.high_thr, args.match_iou,
                                  args.min_frames, args.method, args.duplicate_iou,
                                  args.relink)  # fmt: skip
            summary = segment_video(video, root / "out", segmenter=segmenter, save=("mot",),
                                    stride=args.stride, track=track)  # fmt: skip
            rate = summary.processed / (time.perf_counter() - started)
            result = evaluate_mot_sequence(truth, root / "out" / f"{video.stem}.mot.txt",
                                           metrics=["CLEAR", "Identity"])  # fmt: skip
            c, i = result.CLEAR, result.Identity
            clears.append(c.to_dict())
            identities.append(i.to_dict())
            print(f"{k:>5} {i.IDF1:6.3f} {c.MOTA:6.3f} {c.IDSW:5d} {c.CLR_FN:4d} {c.CLR_FP:4d} "
                  f"{rate:9.1f}")  # fmt: skip
    c, i = aggregate_clear_metrics(clears), aggregate_identity_metrics(identities)
    print(f"{'all':>5} {i['IDF1']:6.3f} {c['MOTA']:6.3f} {int(c['IDSW']):5d} "
          f"{int(c['CLR_FN']):4d} {int(c['CLR_FP']):4d}")  # fmt: skip
    print(
        f"clips {args.clips} x {args.frames} frames, {args.objects} objects, speed "
        f"{args.speed[0]}-{args.speed[1]} px/frame, stride {args.stride}, buffer {args.buffer}, "
        f"seeds {args.seed}-{args.seed + args.clips - 1}, duplicate IoU {args.duplicate_iou}, "
        f"relink {args.relink}"
    )


if __name__ == "__main__":
    main()
