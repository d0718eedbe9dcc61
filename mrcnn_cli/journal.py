"""Resume: one small record per finished image, and the final files assembled from them.

A record is written only after all of an image's outputs are on disk, so "record exists
with the current settings" means "nothing left to do for this image". predictions.json is
always rebuilt from the records in input order, which makes a resumed run's file the same
as a clean run's. Failed images get no record and are retried on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.atomic import write_json, write_text
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.writers import safe_rel
from mrcnn_cli.writers.coco import image_entry

STATE_DIR = ".mrcnn"
FAILURES_FILE = "failures.jsonl"


def settings_hash(settings: object) -> str:
    """A short, stable digest of everything that changes an image's outputs.

    Takes a dataclass or a mapping of plain values; key order does not matter.
    """
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ImageRecord:
    """What a finished image contributed to the run (its COCO results, possibly none)."""

    rel: str
    source: str
    image_id: int
    width: int
    height: int
    results: list[dict[str, Any]]
    settings_hash: str

    @property
    def num_detections(self) -> int:
        return len(self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "rel": self.rel,
            "source": self.source,
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "num_detections": self.num_detections,
            "results": self.results,
            "settings_hash": self.settings_hash,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRecord:
        return cls(
            rel=str(data["rel"]),
            source=str(data["source"]),
            image_id=int(data["image_id"]),
            width=int(data["width"]),
            height=int(data["height"]),
            results=list(data["results"]),
            settings_hash=str(data["settings_hash"]),
        )


class Journal:
    """Per-image records under `<out_dir>/.mrcnn/records/<rel>.json`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.records_dir = self.out_dir / STATE_DIR / "records"

    def record_path(self, rel: PurePosixPath | str) -> Path:
        rel = safe_rel(rel)
        return self.records_dir.joinpath(*rel.parent.parts, rel.name + ".json")

    def load(self, rel: PurePosixPath | str) -> ImageRecord | None:
        """The image's record, or None if there is none or it cannot be read (redo it)."""
        try:
            data = json.loads(self.record_path(rel).read_text(encoding="utf-8"))
            return ImageRecord.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_done(self, rel: PurePosixPath | str, settings_hash: str) -> bool:
        record = self.load(rel)
        return record is not None and record.settings_hash == settings_hash

    def record(
        self,
        rel: PurePosixPath | str,
        *,
        source: Path | str,
        image_id: int,
        width: int,
        height: int,
        results: list[dict[str, Any]],
        settings_hash: str,
    ) -> ImageRecord:
        """Mark an image done; call only after every output file of it is written."""
        record = ImageRecord(
            rel=str(safe_rel(rel)),
            source=str(source),
            image_id=int(image_id),
            width=int(width),
            height=int(height),
            results=results,
            settings_hash=settings_hash,
        )
        write_json(self.record_path(rel), record.to_json())
        return record

    def forget(self, rel: PurePosixPath | str) -> None:
        """Drop an image's record (it failed this time, so older results must not be kept)."""
        self.record_path(rel).unlink(missing_ok=True)

    def clear(self) -> None:
        """Drop every record (`--overwrite`)."""
        shutil.rmtree(self.records_dir, ignore_errors=True)

    def assemble(
        self,
        rels_in_order: Iterable[PurePosixPath | str],
        settings_hash: str | None = None,
        image_ids: Mapping[str, int] | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(COCO results, images entries) of the recorded images, in the given order.

        Images without a record (failed, or not run) are left out. With `settings_hash`,
        records made under other settings are left out too. With `image_ids` (rel -> id),
        ids are taken from it instead of the records, so ids always match this run.
        """
        results: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for rel in rels_in_order:
            record = self.load(rel)
            stale = record is not None and settings_hash not in (None, record.settings_hash)
            if record is None or stale:
                continue
            image_id = record.image_id if image_ids is None else image_ids[record.rel]
            images.append(image_entry(image_id, record.rel, record.width, record.height))
            results.extend({**entry, "image_id": image_id} for entry in record.results)
        return results, images


def failure_to_json(item: FailedItem) -> dict[str, str]:
    """Printable UTF-8 on one line, whatever bytes the file name holds."""
    return {"path": item.display_path, "reason": item.display_reason}


def write_failures(out_dir: Path, failures: list[FailedItem]) -> Path | None:
    """`<out_dir>/failures.jsonl`, one {"path", "reason"} per line; removed when none failed.

    Returns the file written, or None. Removing a stale file keeps a clean rerun from
    looking as if it still had failures.
    """
    path = Path(out_dir) / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return None
    lines = (json.dumps(failure_to_json(item), ensure_ascii=False) for item in failures)
    write_text(path, "".join(line + "\n" for line in lines))
    return path
