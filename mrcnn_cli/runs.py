"""What every job does before its first image: lock the output, collect, load the model.

`segment`, `video` and `eval` (through `segment`) all run inside `prepared_run`, so an
input or output problem reads the same whichever command meets it, two runs never
write one folder at once, and no model is loaded before the cheap checks have passed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn_cli.atomic import remove_stale_temp_files
from mrcnn_cli.config import ModelConfig
from mrcnn_cli.errors import FailedItem, MrcnnError
from mrcnn_cli.lock import LOCK_NAME, OutputLock
from mrcnn_cli.models.bundled import bundled_or_path
from mrcnn_cli.segmenter import Segmenter
from mrcnn_cli.sources import SourceItem, collect_sources, max_input_name_bytes


@dataclass
class PreparedRun:
    """A job's inputs (and the arguments that failed already) with its model loaded."""

    items: list[SourceItem]
    failures: list[FailedItem]
    segmenter: Segmenter
    batch_size: int


def prepare_output(out: Path) -> None:
    """Create the output folder and prove it is writable, before any model is loaded."""
    if not str(out).strip():
        raise MrcnnError("--out is empty; give an output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mrcnn-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MrcnnError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc


@contextmanager
def locked_inputs(
    inputs: Sequence[str],
    kinds: frozenset[str],
    out: Path,
    lock_name: str = LOCK_NAME,
    sweep: bool = True,
) -> Iterator[tuple[list[SourceItem], list[FailedItem]]]:
    """Hold `out`'s lock for the whole run and collect the inputs inside it.

    A second run on the same folder is refused with the holder's pid and host; nothing
    under `out` is ever an input. `sweep` removes temp files a killed run left (not for
    shards, whose siblings may be writing into the same folder right now).
    """
    prepare_output(out)
    with OutputLock(out, lock_name):
        if sweep:
            remove_stale_temp_files(out)
        items, failures = collect_sources(
            inputs, kinds=kinds, exclude=[out], max_name_bytes=max_input_name_bytes(out)
        )
        if not items and not failures:
            raise MrcnnError("no inputs given")
        yield items, failures


@contextmanager
def prepared_run(
    inputs: Sequence[str],
    kinds: frozenset[str],
    out: Path,
    model: ModelConfig,
    batch_size: int | None = None,
    segmenter: Segmenter | None = None,
    lock_name: str = LOCK_NAME,
    sweep: bool = True,
) -> Iterator[PreparedRun]:
    """`locked_inputs`, then the model loaded (or the one given) for the run."""
    with locked_inputs(inputs, kinds, out, lock_name, sweep) as (items, failures):
        if segmenter is None:
            segmenter = Segmenter.from_config(model, batch_size)
        yield PreparedRun(items, failures, segmenter, batch_size or segmenter.batch_size)


def file_fingerprint(path: str | None) -> list[Any] | None:
    """Size and mtime of a checkpoint file, so a retrained model at the same path counts
    as a change of settings (hashing a 100 MB file on every run would cost more)."""
    if not path or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def model_fingerprint(model: ModelConfig) -> list[Any]:
    """The model files' fingerprints: part of every job's output settings."""
    return [file_fingerprint(bundled_or_path(model.model)), file_fingerprint(model.weights)]
