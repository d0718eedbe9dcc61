"""Resume: one record per finished image, and the final COCO files streamed from them.

A record is written only after all of an image's outputs are on disk, so "record exists
with the current settings" means "nothing left to do for this image". predictions.json
is always rebuilt from the records in input order, which makes a resumed run's file the
same as a clean run's. Failed images get no record and are retried on the next run.

Storage: append-only segment files, one per writing process,

    <out>/.mrcnn/journal/<created_ns>-<host>-<pid>-<random>.jsonl

so the local engine, every Ray worker and every shard writing into one folder each
append to a file no one else touches: concurrent writers never interleave, and a
record costs one `write` (no temp file, rename or directory entry per image, which is
what hurts on shared filesystems). A line is

    <header JSON> TAB <COCO results JSON> NEWLINE

where the header holds the image's rel, settings hash, id, size, detection count, the
CRC32 of the results and the source's stamp (its size and mtime when it was read, so a
replaced input is redone), or is a tombstone `{"rel": ..., "forgotten": true}`. JSON
never contains a raw TAB, so the header is read without parsing the results. An index
(rel -> where its latest line is) is built from the headers when first needed and
updated from what was appended since (`refresh`). Segments are read in creation order
and lines in file order; the last line for an image wins. A line that is cut short
(a killed writer), has a CRC mismatch or has wrong types makes the image "not done".

Folders written before this format (one JSON file per image under
`.mrcnn/records/`) stay readable: an image with no line in the segments is looked up
there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from mrcnn_cli.atomic import atomic_path, write_text
from mrcnn_cli.detections import image_entry
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.names import os_error_reason, safe_rel
from mrcnn_cli.progress import RunSummary, Tally

STATE_DIR = ".mrcnn"
JOURNAL_DIR = "journal"
LEGACY_RECORDS_DIR = "records"  # the per-file records of earlier versions (read only)
SEGMENT_SUFFIX = ".jsonl"
FAILURES_FILE = "failures.jsonl"

_TAB = b"\t"
_NOT_DONE = -1  # index value: the image's latest line says "not done" (forgotten or broken)
_HEADER_TYPES = {
    "rel": str,
    "settings_hash": str,
    "source": str,
    "image_id": int,
    "width": int,
    "height": int,
    "num_detections": int,
    "crc": int,
}
_MAX_OPEN_SEGMENTS = 64
_MAX_SEGMENTS = 1 << 20  # segment and settings numbers take 20 bits of an index entry
_STAMP_MASK = (1 << 33) - 1  # a source stamp's code takes 33 bits (0: none recorded)


def _stamp_code(stamp: str | None) -> int:
    """A source stamp as 33 bits of an index entry: its CRC32 with a "present" bit."""
    return 0 if stamp is None else zlib.crc32(stamp.encode("utf-8")) | (1 << 32)


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
        """From a legacy per-file record; raises ValueError/KeyError/TypeError if malformed."""
        results = data["results"]
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise TypeError("results must be a list of objects")
        return cls(
            rel=str(data["rel"]),
            source=str(data["source"]),
            image_id=int(data["image_id"]),
            width=int(data["width"]),
            height=int(data["height"]),
            results=results,
            settings_hash=str(data["settings_hash"]),
        )


@dataclass(frozen=True)
class CocoCounts:
    """What `Journal.write_coco` wrote: image entries and result entries."""

    images: int
    detections: int


def _segment_name() -> str:
    """Sortable by creation time; unique per process (host, pid, random)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    return f"{time.time_ns():020d}-{host}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"


def _valid_header(header: dict[str, Any]) -> bool:
    for key, kind in _HEADER_TYPES.items():
        value = header.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return False
    return True


class _Index:
    """rel -> location of its latest record line, as one int per image (memory: a
    million images cost their rel strings and a million small ints)."""

    def __init__(self) -> None:
        self.entries: dict[str, int] = {}
        self.segments: list[Path] = []
        self.segment_ids: dict[str, int] = {}
        self.consumed: list[int] = []  # bytes of each segment read so far
        self.hashes: list[str] = []
        self.hash_ids: dict[str, int] = {}

    @staticmethod
    def pack(offset: int, segment: int, hash_id: int, stamp: int = 0) -> int:
        return (offset << 73) | (stamp << 40) | (segment << 20) | hash_id

    @staticmethod
    def unpack(loc: int) -> tuple[int, int, int]:
        return loc >> 73, (loc >> 20) & 0xFFFFF, loc & 0xFFFFF

    @staticmethod
    def stamp_code(loc: int) -> int:
        return (loc >> 40) & _STAMP_MASK

    def hash_id(self, digest: str) -> int:
        found = self.hash_ids.get(digest)
        if found is None:
            if len(self.hashes) >= _MAX_SEGMENTS:
                raise RuntimeError(f"more than {_MAX_SEGMENTS} settings in one journal")
            found = self.hash_ids[digest] = len(self.hashes)
            self.hashes.append(digest)
        return found

    def add_segment(self, path: Path, consumed: int = 0) -> int:
        idx = self.segment_ids.get(path.name)
        if idx is None:
            if len(self.segments) >= _MAX_SEGMENTS:
                raise RuntimeError(f"more than {_MAX_SEGMENTS} journal files in one folder")
            idx = self.segment_ids[path.name] = len(self.segments)
            self.segments.append(path)
            self.consumed.append(consumed)
        return idx

    def scan(self, idx: int) -> None:
        """Apply the complete lines appended to segment `idx` since the last scan."""
        offset = self.consumed[idx]
        try:
            with open(self.segments[idx], "rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # still being written, or cut short by a killed writer
                    self.apply(line, idx, offset)
                    offset += len(line)
        except OSError:
            return
        self.consumed[idx] = offset

    def apply(self, line: bytes, idx: int, offset: int) -> None:
        tab = line.find(_TAB)
        try:
            header = json.loads(line[:tab] if tab >= 0 else line)
        except ValueError:
            return  # not even the image is known: nothing to update
        if not isinstance(header, dict) or not isinstance(header.get("rel"), str):
            return
        rel = header["rel"]
        if tab < 0 or not _valid_header(header):
            self.entries[rel] = _NOT_DONE  # a tombstone, or a record that cannot be trusted
            return
        if zlib.crc32(memoryview(line)[tab + 1 : -1]) != header["crc"]:
            self.entries[rel] = _NOT_DONE
            return
        stamp = header.get("stamp")
        code = _stamp_code(stamp if isinstance(stamp, str) else None)
        self.entries[rel] = self.pack(offset, idx, self.hash_id(header["settings_hash"]), code)


class _Segment:
    """This process's own append-only file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        self.size = 0

    def append(self, data: bytes) -> int:
        """Write `data` at the end; return the offset it starts at."""
        offset = self.size
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)
        return offset

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Reader:
    """Reads record lines back, keeping a few segment files open."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.files: dict[int, BinaryIO] = {}

    def line(self, idx: int, offset: int) -> bytes:
        f = self.files.get(idx)
        if f is None:
            if len(self.files) >= _MAX_OPEN_SEGMENTS:
                self.files.pop(next(iter(self.files))).close()
            f = self.files[idx] = open(self.index.segments[idx], "rb")  # noqa: SIM115
        f.seek(offset)
        return f.readline()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


@dataclass(frozen=True)
class _Found:
    """An image's record as read back: raw results JSON (fast path) or parsed (legacy)."""

    rel: str
    source: str
    settings_hash: str
    image_id: int
    width: int
    height: int
    num_detections: int
    body: bytes | None  # the results list as JSON text, entries already carrying image_id
    results: list[dict[str, Any]] | None

    def record(self) -> ImageRecord | None:
        """The record this line holds, or None if its results cannot be parsed."""
        try:
            results = self.parsed_results()
        except (ValueError, TypeError):
            return None
        return ImageRecord(self.rel, self.source, self.image_id, self.width, self.height,
                           results, self.settings_hash)  # fmt: skip

    def parsed_results(self) -> list[dict[str, Any]]:
        """The results as dicts; raises ValueError or TypeError if they are malformed."""
        if self.results is not None:
            return self.results
        results = json.loads(self.body or b"")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise TypeError("results must be a list of objects")
        return results


class Journal:
    """The resume journal of one output folder (see the module docstring)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.state_dir = self.out_dir / STATE_DIR
        self.journal_dir = self.state_dir / JOURNAL_DIR
        self.legacy_dir = self.state_dir / LEGACY_RECORDS_DIR
        self._lock = threading.RLock()
        self._index: _Index | None = None
        self._legacy = False
        self._segment: _Segment | None = None

    # --- reading ----------------------------------------------------------------------
    def _loaded(self) -> _Index:
        """The index, built on first use from every segment on disk."""
        if self._index is None:
            self._index = _Index()
            self._legacy = self.legacy_dir.is_dir()
            self._scan_new()
        return self._index

    def _scan_new(self, known: Iterable[str] = ()) -> None:
        index = self._index
        assert index is not None
        try:
            listed = {p.name for p in self.journal_dir.iterdir() if p.suffix == SEGMENT_SUFFIX}
        except OSError:
            listed = set()
        for name in sorted(listed | {n for n in known if n.endswith(SEGMENT_SUFFIX)}):
            index.scan(index.add_segment(self.journal_dir / name))

    def refresh(self, known: Iterable[str] = ()) -> None:
        """Read what other processes appended since the index was built (Ray workers).

        `known`: segment file names to read even if the folder listing does not show
        them yet (an NFS client may cache a directory listing for a while).
        """
        with self._lock:
            if self._index is None:
                self._loaded()
            self._scan_new(known)

    @property
    def segment_name(self) -> str | None:
        """The file name of this process's segment, once it has written one."""
        segment = self._segment
        return segment.path.name if segment is not None else None

    def _key(self, rel: PurePosixPath | str) -> str:
        return str(rel) if isinstance(rel, PurePosixPath) else str(safe_rel(rel))

    def _legacy_load(self, rel: str) -> ImageRecord | None:
        safe = safe_rel(rel)
        path = self.legacy_dir.joinpath(*safe.parent.parts, safe.name + ".json")
        try:
            return ImageRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _settings_of(self, rel: str) -> str | None:
        """The settings hash of the image's valid record, or None (not done)."""
        index = self._loaded()
        loc = index.entries.get(rel)
        if loc is None:
            if self._legacy:
                record = self._legacy_load(rel)
                return record.settings_hash if record is not None else None
            return None
        if loc == _NOT_DONE:
            return None
        return index.hashes[_Index.unpack(loc)[2]]

    def is_done(
        self, rel: PurePosixPath | str, settings_hash: str, stamp: str | None = None
    ) -> bool:
        """Recorded under `settings_hash` and, if `stamp` is given, from the same source
        file (records written before stamps existed match any stamp)."""
        with self._lock:
            key = self._key(rel)
            if self._settings_of(key) != settings_hash:
                return False
            if stamp is None:
                return True
            loc = self._loaded().entries.get(key)
            recorded = _Index.stamp_code(loc) if loc is not None else 0
            return recorded in (0, _stamp_code(stamp))

    def _find(self, rel: str, reader: _Reader, settings_hash: str | None) -> _Found | None:
        """The image's record, or None if there is none, it is stale or it cannot be read."""
        index = self._loaded()
        loc = index.entries.get(rel)
        if loc is None:
            record = self._legacy_load(rel) if self._legacy else None
            if record is None or settings_hash not in (None, record.settings_hash):
                return None
            return _Found(
                rel,
                record.source,
                record.settings_hash,
                record.image_id,
                record.width,
                record.height,
                record.num_detections,
                None,
                record.results,
            )
        if loc == _NOT_DONE:
            return None
        offset, idx, hash_id = _Index.unpack(loc)
        if settings_hash not in (None, index.hashes[hash_id]):
            return None
        try:
            line = reader.line(idx, offset)
        except OSError:
            return None
        tab = line.find(_TAB)
        if tab < 0 or not line.endswith(b"\n"):
            return None
        try:
            header = json.loads(line[:tab])
        except ValueError:
            return None
        body = line[tab + 1 : -1]
        if not isinstance(header, dict) or not _valid_header(header) or header["rel"] != rel:
            return None
        if zlib.crc32(body) != header["crc"]:
            return None
        return _Found(
            rel,
            header["source"],
            header["settings_hash"],
            header["image_id"],
            header["width"],
            header["height"],
            header["num_detections"],
            body,
            None,
        )

    def load(self, rel: PurePosixPath | str) -> ImageRecord | None:
        """The image's record, or None if there is none or it cannot be read (redo it)."""
        found = next(self._iter_found([rel], None), None)
        return None if found is None else found.record()

    def records(
        self, rels_in_order: Iterable[PurePosixPath | str], settings_hash: str | None = None
    ) -> Iterator[ImageRecord]:
        """The readable records of `rels_in_order` made under `settings_hash`, in order,
        through one reader (`load` opens the segment file per call)."""
        for found in self._iter_found(rels_in_order, settings_hash):
            record = found.record()
            if record is not None:
                yield record

    # --- writing ----------------------------------------------------------------------
    def _append(self, line: bytes) -> tuple[int, int]:
        """Append one line to this process's segment; (offset, segment index or -1)."""
        segment = self._segment
        if segment is None or segment.pid != os.getpid():  # none yet, or we were forked
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            segment = self._segment = _Segment(self.journal_dir / _segment_name())
        try:
            offset = segment.append(line)
        except BaseException:
            # A partial line may be left: never append after it (the next line would be
            # glued to it). Start a fresh segment for the next record instead.
            segment.close()
            self._segment = None
            raise
        if self._index is None:
            return offset, -1
        idx = self._index.add_segment(segment.path, consumed=offset)
        self._index.consumed[idx] = segment.size
        return offset, idx

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
        stamp: str | None = None,
    ) -> ImageRecord:
        """Mark an image done; call only after every output file of it is written.

        `stamp` identifies the source file as it was read (`sources.source_stamp`).
        """
        image_id = int(image_id)
        if any(r.get("image_id") != image_id for r in results):
            results = [{**r, "image_id": image_id} for r in results]
        record = ImageRecord(
            rel=self._key(rel),
            source=str(source),
            image_id=image_id,
            width=int(width),
            height=int(height),
            results=results,
            settings_hash=settings_hash,
        )
        body = json.dumps(results).encode("ascii")
        header = {
            "rel": record.rel,
            "settings_hash": settings_hash,
            "source": record.source,
            "image_id": image_id,
            "width": record.width,
            "height": record.height,
            "num_detections": len(results),
            "crc": zlib.crc32(body),
        }
        if stamp is not None:
            header["stamp"] = stamp
        line = b"".join((json.dumps(header).encode("ascii"), _TAB, body, b"\n"))
        with self._lock:
            offset, idx = self._append(line)
            if self._index is not None:
                hash_id = self._index.hash_id(settings_hash)
                loc = _Index.pack(offset, idx, hash_id, _stamp_code(stamp))
                self._index.entries[record.rel] = loc
        return record

    def forget(self, rel: PurePosixPath | str) -> None:
        """Drop an image's record (it failed this time, so older results must not be kept)."""
        key = self._key(rel)
        with self._lock:
            if self._index is not None and self._settings_of(key) is None:
                return  # nothing valid recorded: nothing to forget
            self._append(json.dumps({"rel": key, "forgotten": True}).encode("ascii") + b"\n")
            if self._index is not None:
                self._index.entries[key] = _NOT_DONE

    def clear(self, rels: Iterable[PurePosixPath | str] | None = None) -> None:
        """Drop every record (`--overwrite`), or only those of `rels` (a shard's images:
        other shards may be writing to the same folder)."""
        with self._lock:
            if rels is not None:
                for rel in rels:
                    self.forget(rel)
                return
            self.close()
            shutil.rmtree(self.journal_dir, ignore_errors=True)
            shutil.rmtree(self.legacy_dir, ignore_errors=True)
            self._index = _Index()
            self._legacy = False

    def flush(self) -> None:
        """Make this process's records durable (and visible to other NFS clients)."""
        with self._lock:
            if self._segment is not None and self._segment.pid == os.getpid():
                os.fsync(self._segment.fd)

    def close(self) -> None:
        with self._lock:
            if self._segment is not None:
                self._segment.close()
                self._segment = None

    # --- assembling ---------------------------------------------------------------------
    def _iter_found(
        self,
        rels_in_order: Iterable[PurePosixPath | str],
        settings_hash: str | None,
    ) -> Iterator[_Found]:
        with self._lock:
            reader = _Reader(self._loaded())
        try:
            for rel in rels_in_order:
                with self._lock:
                    found = self._find(self._key(rel), reader, settings_hash)
                if found is not None:
                    yield found
        finally:
            reader.close()

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
        Holds everything in memory: `write_coco` streams the same content to files.
        """
        results: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for found in self._iter_found(rels_in_order, settings_hash):
            try:
                entries = found.parsed_results()
            except (ValueError, TypeError):
                continue
            image_id = found.image_id if image_ids is None else image_ids[found.rel]
            images.append(image_entry(image_id, found.rel, found.width, found.height))
            results.extend({**entry, "image_id": image_id} for entry in entries)
        return results, images

    def write_coco(
        self,
        predictions_path: Path,
        images_path: Path,
        rels_in_order: Iterable[PurePosixPath | str],
        settings_hash: str | None = None,
        image_ids: Mapping[str, int] | None = None,
    ) -> CocoCounts:
        """Stream predictions.json and images.json of the recorded images, in order.

        Same selection and bytes as `assemble` followed by `write_predictions` and
        `write_images_file`, without holding the results: each image's results are
        copied from its record line (parsed only where its image id changed). Both files
        are written to temporary names and renamed into place.
        """
        images = detections = 0
        with (
            atomic_path(predictions_path) as pred_tmp,
            atomic_path(images_path) as images_tmp,
            open(pred_tmp, "wb", buffering=1 << 20) as pred,
            open(images_tmp, "wb", buffering=1 << 20) as imgs,
        ):
            pred.write(b"[")
            imgs.write(b"[")
            for found in self._iter_found(rels_in_order, settings_hash):
                image_id = found.image_id if image_ids is None else image_ids[found.rel]
                try:
                    chunk, count = _results_chunk(found, image_id)
                except (ValueError, TypeError):
                    continue
                if chunk:
                    pred.write(b", " + chunk if detections else chunk)
                detections += count
                entry = image_entry(image_id, found.rel, found.width, found.height)
                entry = json.dumps(entry, indent=1).replace("\n", "\n ")  # as in a list
                imgs.write((",\n " if images else "\n ").encode("ascii") + entry.encode("ascii"))
                images += 1
            pred.write(b"]")
            imgs.write(b"\n]" if images else b"]")
        return CocoCounts(images, detections)


def _results_chunk(found: _Found, image_id: int) -> tuple[bytes, int]:
    """The image's entries as they appear inside predictions.json's list, and how many.

    The record's results were written by `json.dumps` with the image id in every entry,
    so when the id is unchanged the text between its brackets is copied as it is: the
    same bytes `json.dumps` of the whole list would give.
    """
    if found.body is not None and image_id == found.image_id:
        return found.body[1:-1], found.num_detections
    dumped = [json.dumps({**e, "image_id": image_id}) for e in found.parsed_results()]
    return ", ".join(dumped).encode("ascii"), len(dumped)


def failure_to_json(item: FailedItem) -> dict[str, str]:
    """Printable UTF-8 on one line, whatever bytes the file name holds."""
    return {"path": item.display_path, "reason": item.display_reason}


def write_failures(
    out_dir: Path, failures: list[FailedItem], name: str = FAILURES_FILE
) -> FailedItem | None:
    """`<out_dir>/failures.jsonl`, one {"path", "reason"} per line; removed when none failed.

    Removing a stale file keeps a clean rerun from looking as if it still had failures.
    `name` is another file name (a shard's). Never raises for the file system (a full
    disk, a read-only folder): returns that problem as one more failure instead, for
    the run to report, or None when the file is as it should be.
    """
    path = Path(out_dir) / name
    try:
        if not failures:
            path.unlink(missing_ok=True)
            return None
        lines = (json.dumps(failure_to_json(item), ensure_ascii=False) for item in failures)
        write_text(path, "".join(line + "\n" for line in lines))
    except OSError as exc:
        return FailedItem(path, f"cannot write: {os_error_reason(exc)}")
    return None


def close_with_failures(tally: Tally, out_dir: Path, name: str = FAILURES_FILE) -> RunSummary:
    """The run's summary, after writing its failures file; a failures file that cannot
    be written is reported (and counted) like any other failure, never raised."""
    problem = write_failures(out_dir, tally.failed, name)
    if problem is not None:
        tally.fail(problem)
    return tally.summary()
