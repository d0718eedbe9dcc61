"""Which frames the model sees (`--stride`), batched, and the rest reuse their result."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mrcnn_cli.detections import Detections
from mrcnn_cli.segmenter import Segmenter
from mrcnn_cli.video.reader import Frame


def predict_frames(
    frames: Iterable[Frame],
    segmenter: Segmenter,
    batch_size: int,
    stride: int,
    max_held: int = 32,
) -> Iterator[tuple[Frame, Detections]]:
    """(frame, detections) for every frame, in order; the model sees every `stride`-th.

    Keyed frames are batched `batch_size` at a time; the frames after a keyed frame wait
    for its result (so at most `max_held` frames are held: a batch is cut short when
    more would be) and then share its `Detections` object.
    """
    held: list[Frame] = []
    keyed = 0
    last: Detections | None = None

    def flush() -> Iterator[tuple[Frame, Detections]]:
        nonlocal last, keyed
        keys = [f.image for f in held if f.index % stride == 0]
        results = iter(segmenter.predict(keys, batch_size=len(keys)) if keys else ())
        for f in held:
            if f.index % stride == 0:
                last = next(results)
            assert last is not None
            yield f, last
        held.clear()
        keyed = 0

    for frame in frames:
        is_key = frame.index % stride == 0
        if not is_key and not held:
            assert last is not None  # frame 0 is always keyed
            yield frame, last
            continue
        held.append(frame)
        keyed += is_key
        if keyed == batch_size or len(held) >= max_held:
            yield from flush()
    if held:
        yield from flush()
