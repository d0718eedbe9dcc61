"""`mrcnn video`: Mask R-CNN on the frames of a video, written back as an annotated MP4.

    reader thread: PyAV decode -> upright RGB frames        (bounded queue)
    main thread:   batches of keyed frames -> Segmenter  (the same object as for images)
    writer thread: overlay -> H.264 encode + audio copy, mask PNGs, COCO (bounded queue)

With `--stride N` only every Nth frame goes through the model and the frames between
reuse the last prediction, so the output still has every frame. Frames exist only
between the reader and the writer: a few batches at most, however long the video.

Every output goes to a temp file that is renamed when the video is finished, so a
killed run or a file that cannot be decoded never leaves a half-written MP4 behind. A
cut file keeps the frames that decode and is reported as a failure for the rest.
"""

from mrcnn_cli.video.encoder import pick_encoder
from mrcnn_cli.video.job import process_video, run_videos
from mrcnn_cli.video.keyframes import predict_frames
from mrcnn_cli.video.reader import DecodeReport, Frame, FrameWindow, decode_frames

__all__ = [
    "DecodeReport",
    "Frame",
    "FrameWindow",
    "decode_frames",
    "pick_encoder",
    "predict_frames",
    "process_video",
    "run_videos",
]
