"""Expand the CLI's input arguments (files, folders, globs, .txt lists) into ordered items.

Every item carries `rel`, the relative path its outputs are named after. Two different
files must never share an output name, so colliding names are made unique here, once,
instead of in every writer.

What is never taken as an input, each a per-file failure rather than an exception:

* anything but a regular file (a FIFO would hang the run, a device such as /dev/zero would
  read until memory runs out): "not a regular file (fifo)"; a list file must be regular too;
* a symbolic link that loops or points nowhere: "symbolic link loop", "broken symbolic link";
* a file whose outputs could not be named: outputs add at most `OUTPUT_NAME_OVERHEAD`
  bytes to an input's file name (the atomic writer's `.{name}.{8 random}{suffix}` around
  the longest output name, a video's `{stem}.predictions.json`), so a name may have at
  most `max_input_name_bytes(out_dir)` bytes: the output file system's NAME_MAX (255 on
  nearly all) less that overhead, 215 bytes;
* anything inside an excluded folder (the run's output folder, so that a second run does
  not segment the first run's overlays): skipped when a folder or glob reaches it,
  a failure when named explicitly.

Folder walks skip hidden entries and do not follow symbolic links to folders; `**` in a
glob does not follow them either (a link loop would expand without end).
"""

from __future__ import annotations

import glob
import io
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from mrcnn_cli.coco_file import read_coco_instances
from mrcnn_cli.errors import FailedItem, MrcnnError
from mrcnn_cli.names import not_regular_reason, os_error_reason
from mrcnn_cli.remote import RemoteError, RemotePath, is_url, list_objects, object_info_stamp

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
LIST_EXT = ".txt"
LIST_FILE_MAX_BYTES = 64 * 1024 * 1024

# Bytes that outputs add to an input's file name: the longest output name made from it is
# `{stem}.predictions.json` (a video's predictions; +17 with the stem no longer than the
# name), and atomic.py writes it first as `.{that}.tmp~{8 random characters}.json` (+19).
# Rounded up to leave room for a new output kind.
OUTPUT_NAME_OVERHEAD = 40
DEFAULT_NAME_MAX = 255

IN_OUTPUT_FOLDER = "is inside the output folder"

Kind = Literal["image", "video", "frames"]
# "frames": a folder of image files read as one clip (`mrcnn video` only); it has no
# extension of its own, a folder walk finds it (see `_Collector.walk_folder`).
_EXTS: dict[Kind, frozenset[str]] = {
    "image": IMAGE_EXTS,
    "video": VIDEO_EXTS,
    "frames": frozenset(),
}
_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | os.O_NOCTTY


@dataclass(frozen=True)
class SourceItem:
    """One input file; `rel` (original extension kept) names its outputs. `path` is a
    `RemotePath` (a URL) for an object in a bucket or on a web server."""

    path: Path | RemotePath
    rel: PurePosixPath
    kind: Kind


def source_stamp(path: Path | str) -> str | None:
    """What resume compares to know an input is the file it recorded: size and mtime (ns).

    Taken before the file is read, so a file replaced while it is processed is redone by
    the next run rather than trusted. None if the file cannot be stat'ed. An object's
    stamp is its ETag (see remote.py), as listed when the inputs were collected.
    """
    if isinstance(path, RemotePath) and path.stamp is not None:
        return path.stamp  # as listed: no request per object
    if is_url(path):
        return object_info_stamp(str(path))
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class _Found:
    """An expanded file before de-duplication; `anchor` disambiguates a colliding `rel`."""

    path: Path | RemotePath
    rel: PurePosixPath
    kind: Kind
    anchor: str


def max_input_name_bytes(out_dir: Path | str | None = None) -> int:
    """The longest input file name, in bytes, whose outputs fit in `out_dir`'s file system.

    NAME_MAX comes from `pathconf` on the nearest existing folder at or above `out_dir`
    (the current folder if None), 255 where the system does not say.
    """
    folder = Path(out_dir) if out_dir is not None else Path(".")
    for candidate in (folder, *folder.absolute().parents):
        try:
            name_max = os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
        if name_max > 0:
            return name_max - OUTPUT_NAME_OVERHEAD
        break
    return DEFAULT_NAME_MAX - OUTPUT_NAME_OVERHEAD


def collect_sources(
    inputs: Sequence[str | Path],
    kinds: frozenset[str] = frozenset({"image"}),
    exclude: Sequence[str | Path] = (),
    max_name_bytes: int | None = None,
) -> tuple[list[SourceItem], list[FailedItem]]:
    """Expand `inputs` in the order given (each one sorted) into unique items and failures.

    `kinds` says which files a folder or glob yields ("image", "video" or both) and
    whether an explicitly named video is accepted. With "frames" (and without "image"),
    a folder that holds image files and no video is one item of kind "frames": a clip
    of its images (not those of its subfolders), named after the folder. Nothing at or
    below a folder in `exclude` is taken (compared by real path, so links do not get
    around it).
    `max_name_bytes` is the longest file name accepted (default: `max_input_name_bytes()`
    for the current folder; pass `max_input_name_bytes(out_dir)`).
    """
    unknown = set(kinds) - set(_EXTS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {sorted(_EXTS)}, got {kinds}")
    limit = max_input_name_bytes() if max_name_bytes is None else max_name_bytes
    collector = _Collector(frozenset(kinds), _Excluded.of(exclude))
    for raw in inputs:
        if is_url(str(raw)):
            collector.expand_url(str(raw))
        else:
            collector.expand(Path(raw), str(raw), lists_open=())
    unique = []
    for f in _drop_repeated_files(collector.found):
        size = len(os.fsencode(f.path.name))
        if size > limit:
            reason = f"file name too long for outputs ({size} bytes; limit {limit})"
            collector.failed.append(FailedItem(f.path, reason))
        else:
            unique.append(f)
    rels = _unique_rels(unique)
    items = [SourceItem(f.path, rel, f.kind) for f, rel in zip(unique, rels, strict=True)]
    return items, collector.failed


# --- excluded folders --------------------------------------------------------------


@dataclass(frozen=True)
class _Excluded:
    """Folders whose contents are never inputs, by real path and by (device, inode)."""

    real_paths: tuple[str, ...] = ()
    inodes: frozenset[tuple[int, int]] = frozenset()

    @classmethod
    def of(cls, folders: Sequence[str | Path]) -> _Excluded:
        real_paths, inodes = [], set()
        for folder in folders:
            real_paths.append(os.path.realpath(folder))
            try:
                st = os.stat(folder)
            except (OSError, ValueError):
                continue  # not there yet: nothing inside it either
            inodes.add((st.st_dev, st.st_ino))
        return cls(tuple(real_paths), frozenset(inodes))

    def holds(self, path: str | Path) -> bool:
        """Whether `path` (which exists) is an excluded folder or anything below one."""
        if not self.real_paths:
            return False
        real = os.path.realpath(path)
        return any(
            real == top or real.startswith(top.rstrip(os.sep) + os.sep) for top in self.real_paths
        )

    def is_excluded_dir(self, entry: os.DirEntry[str]) -> bool:
        """For a folder met in a walk: cheap inode check first, device only on a match."""
        if not any(ino == entry.inode() for _, ino in self.inodes):
            return False
        st = entry.stat(follow_symlinks=False)
        return (st.st_dev, st.st_ino) in self.inodes


# --- expansion of the arguments --------------------------------------------------------


@dataclass
class _Collector:
    kinds: frozenset[str]
    excluded: _Excluded
    found: list[_Found] = field(default_factory=list)
    failed: list[FailedItem] = field(default_factory=list)

    def fail(self, path: Path | str, reason: str) -> None:
        self.failed.append(FailedItem(path, reason))

    def expand(self, path: Path, raw: str, lists_open: tuple[str, ...]) -> None:
        """Append what one argument (or one line of a list file) stands for."""
        try:
            st = os.stat(path)
        except (OSError, ValueError) as exc:
            if _GLOB_MAGIC.search(raw):
                self.expand_glob(raw)
            else:
                self.fail(path, _stat_reason(path, exc))
            return
        if self.excluded.holds(path):
            self.fail(path, IN_OUTPUT_FOLDER)
        elif stat.S_ISDIR(st.st_mode):
            self.expand_folder(path)
        elif not stat.S_ISREG(st.st_mode):
            self.fail(path, not_regular_reason(st.st_mode))
        elif path.suffix.lower() == LIST_EXT:
            self.expand_list(path, lists_open)
        else:
            self.expand_file(path)

    def expand_url(self, url: str) -> None:
        """A prefix's images (named by their keys below it), or one object (by its name)."""
        try:
            objects, is_prefix = list_objects(url)
        except RemoteError as exc:
            self.fail(url, str(exc))
            return
        anchor = _url_anchor(url) if is_prefix else _url_anchor(url.rsplit("/", 1)[0])
        taken = 0
        for obj, rel in objects:
            kind = _kind_of(obj.name)
            parts = rel.split("/")
            if is_prefix and (kind is None or any(p.startswith(".") for p in parts)):
                continue  # as a folder walk: other files and hidden entries are not inputs
            if kind == "video":
                self.fail(obj, "videos are not read from URLs: only images")
                continue
            if "image" not in self.kinds:
                self.fail(obj, "is an image; use `mrcnn segment`")
                continue
            if any(p in ("", ".", "..") for p in parts):
                self.fail(obj, "object key cannot name an output file (empty, . or .. part)")
                continue
            self.found.append(_Found(obj, PurePosixPath(rel), "image", anchor))
            taken += 1
        if is_prefix and not taken:
            self.fail(url, "no images found under this prefix")

    def expand_file(self, path: Path) -> None:
        """An explicitly named file is taken even with an odd extension: the decoder judges."""
        kind = _kind_of(path.name)
        if kind is not None and kind not in self.kinds:
            hint = (
                "is a video; use `mrcnn video`"
                if kind == "video"
                else "is an image; use `mrcnn segment`"
            )
            self.fail(path, hint)
            return
        if kind is None:
            kind = "image" if "image" in self.kinds else "video"
        self.found.append(_Found(path, PurePosixPath(path.name), kind, _folder_name(path.parent)))

    def expand_folder(self, folder: Path) -> None:
        """Every matching file below `folder`; rel is relative to the folder."""
        failures_before = len(self.failed)
        matches = self.walk_folder(folder)
        if not matches and len(self.failed) == failures_before:
            self.fail(folder, f"no {_noun(self.kinds)} found in folder")
        anchor = _folder_name(folder)
        for rel, kind in matches:
            if not rel.parts:  # the folder itself is a clip of frames: named after it
                self.found.append(_Found(folder, PurePosixPath(anchor), kind, anchor))
            else:
                self.found.append(_Found(folder / rel, rel, kind, anchor))

    def walk_folder(self, folder: Path) -> list[tuple[PurePosixPath, Kind]]:
        """Walk in natural order: hidden entries skipped, links to folders not followed,
        excluded folders left out, problems reported (in the same order). With "frames"
        in `kinds`, a folder holding images and no video is one match (its own rel)."""
        frame_folders = "frames" in self.kinds and "image" not in self.kinds
        matches: list[tuple[PurePosixPath, Kind]] = []
        problems: list[tuple[PurePosixPath, FailedItem]] = []
        stack = [PurePosixPath()]  # an explicit stack: no recursion limit on deep trees
        while stack:
            rel_dir = stack.pop()
            dirpath = folder.joinpath(*rel_dir.parts)
            try:
                with os.scandir(dirpath) as it:
                    entries = list(it)
            except OSError as exc:
                reason = f"cannot read folder: {os_error_reason(exc, dirpath)}"
                problems.append((rel_dir, FailedItem(dirpath, reason)))
                continue
            images = videos = 0
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel, kind = rel_dir / entry.name, _kind_of(entry.name)
                images += kind == "image"
                videos += kind == "video"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not self.excluded.is_excluded_dir(entry):
                            stack.append(rel)
                        continue
                    if kind not in self.kinds:
                        continue
                    reason = self._walked_file_problem(entry)
                except OSError as exc:
                    if kind not in self.kinds:
                        continue
                    reason = os_error_reason(exc, entry.path)
                if reason is None:
                    matches.append((rel, kind))
                elif reason:
                    problems.append((rel, FailedItem(dirpath / entry.name, reason)))
            if frame_folders and images and not videos:
                matches.append((rel_dir, "frames"))
        problems.sort(key=lambda p: natural_path_key(p[0]))
        self.failed.extend(item for _, item in problems)
        return sorted(matches, key=lambda m: natural_path_key(m[0]))

    def _walked_file_problem(self, entry: os.DirEntry[str]) -> str | None:
        """None to take the file; a reason to report it; "" to pass over it silently."""
        if entry.is_file(follow_symlinks=False):
            return None
        if not entry.is_symlink():
            return not_regular_reason(entry.stat(follow_symlinks=False).st_mode)
        st = os.stat(entry.path)  # ELOOP, ENOENT: raised, reported by the caller
        if stat.S_ISDIR(st.st_mode) or self.excluded.holds(entry.path):
            return ""  # links to folders are not followed; the output folder is not input
        return None if stat.S_ISREG(st.st_mode) else not_regular_reason(st.st_mode)

    def expand_glob(self, pattern: str) -> None:
        """`**` recurses; matched folders are walked; rel is relative to the literal prefix."""
        parts = Path(pattern).parts
        literal = _takewhile_literal(parts)
        base = Path(*literal) if literal else Path(".")
        try:
            matches = _glob(pattern, base, parts[len(literal) :])
        except (OSError, RecursionError) as exc:
            reason = os_error_reason(exc) if isinstance(exc, OSError) else "folders too deep"
            self.fail(pattern, f"cannot expand this pattern: {reason}")
            return
        if not matches:
            self.fail(pattern, "no files match this pattern")
            return
        files: list[tuple[PurePosixPath, Kind]] = []
        for match in sorted(matches, key=lambda m: natural_path_key(PurePosixPath(m))):
            rel = PurePosixPath(match.relative_to(base).as_posix())
            kind = _kind_of(match.name)
            try:
                st = os.stat(match)
            except (OSError, ValueError) as exc:
                if kind in self.kinds:
                    self.fail(match, _stat_reason(match, exc))
                continue
            if self.excluded.holds(match):
                continue
            if stat.S_ISDIR(st.st_mode):
                files.extend((rel / sub, k) for sub, k in self.walk_folder(match))
            elif kind in self.kinds:
                if stat.S_ISREG(st.st_mode):
                    files.append((rel, kind))
                else:
                    self.fail(match, not_regular_reason(st.st_mode))
        if not files:
            self.fail(pattern, f"no {_noun(self.kinds)} match this pattern")
            return
        anchor = _folder_name(base)
        for rel, kind in sorted(files, key=lambda m: natural_path_key(m[0])):
            self.found.append(_Found(base / rel, rel, kind, anchor))

    def expand_list(self, list_file: Path, lists_open: tuple[str, ...]) -> None:
        """One path per line, `#` comments and blank lines skipped, relative to the list's
        folder; UTF-8 text of at most `LIST_FILE_MAX_BYTES`."""
        real = os.path.realpath(list_file)
        if real in lists_open:
            self.fail(list_file, "list file includes itself")
            return
        try:
            text = _read_list_file(list_file)
        except _ListFileError as exc:
            self.fail(list_file, str(exc))
            return
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
        if not entries:
            self.fail(list_file, "list file names no paths")
            return
        for entry in entries:
            if is_url(entry):
                self.expand_url(entry)
                continue
            path = Path(os.path.expanduser(entry))
            if not path.is_absolute():
                path = list_file.parent / path
            self.expand(path, str(path), (*lists_open, real))


class UnreadableFile(Exception):
    """A file that `read_regular_file` refused or could not read; str() is the reason."""


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """The whole of `path` if it is a regular file of at most `max_bytes` bytes.

    Checked with `stat` before opening, and again with `fstat` on the open descriptor (the
    file may have been swapped meanwhile); opened non-blocking, so that even a FIFO slipped
    in between cannot hang the read. Raises `UnreadableFile` with a one-line reason.
    """
    try:
        _check_regular(os.stat(path), max_bytes)
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise UnreadableFile(os_error_reason(exc, path)) from exc
    with open(fd, "rb") as f:
        size = _check_regular(os.fstat(fd), max_bytes)
        try:
            return _read_at_most(f, size, max_bytes)
        except OSError as exc:
            raise UnreadableFile(f"cannot read file ({os_error_reason(exc)})") from exc


def _check_regular(st: os.stat_result, max_bytes: int) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFile(not_regular_reason(st.st_mode))
    if st.st_size > max_bytes:
        raise UnreadableFile(_too_many_bytes(st.st_size, max_bytes))
    return st.st_size


def _read_at_most(f: io.BufferedReader, expected: int, max_bytes: int) -> bytes:
    """Read to the end, but never more than `max_bytes` (a file may grow while we read,
    and files in /proc and /sys say they hold 0 bytes)."""
    data = f.read(expected + 1)  # one call, one exact allocation, for the usual case
    if len(data) <= expected:
        return data
    parts, total = [data], len(data)
    while total <= max_bytes:
        chunk = f.read(min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    raise UnreadableFile(_too_many_bytes(total, max_bytes))


def _too_many_bytes(size: int, max_bytes: int) -> str:
    return f"file too large: {size:,} bytes exceeds the {max_bytes:,}-byte limit"


def _read_list_file(path: Path) -> str:
    try:
        data = read_regular_file(path, LIST_FILE_MAX_BYTES)
    except UnreadableFile as exc:
        raise _ListFileError(f"cannot read list file: {exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _ListFileError("cannot read list file: not UTF-8 text") from exc


class _ListFileError(Exception):
    """A list file that cannot be read, with the one-line reason."""


def _glob(pattern: str, base: Path, rest: Sequence[str]) -> list[Path]:
    """Paths matching `pattern`, as the shell would, but `**` never follows a link to a
    folder: with `glob.glob`, two links to `.` make `**` expand exponentially."""
    if "**" not in rest:
        return [Path(m) for m in glob.glob(pattern, recursive=True)]
    # pathlib refuses `**` inside a component; glob.glob reads it as `*`, and so do we
    rest = [part if part == "**" else re.sub(r"\*\*+", "*", part) for part in rest]
    matches = base.glob("/".join(rest))  # pathlib: `**` does not follow links
    if any(part.startswith(".") for part in rest):
        return list(matches)
    # Like glob.glob: wildcards match no hidden names unless the pattern spells a dot.
    return [m for m in matches if not any(p.startswith(".") for p in m.relative_to(base).parts)]


def _stat_reason(path: Path | str, exc: Exception) -> str:
    if isinstance(exc, ValueError):  # "embedded null byte"
        return "invalid path (contains a NUL character)"
    assert isinstance(exc, OSError)
    return os_error_reason(exc, path)


# --- de-duplication and unique output names ----------------------------------------


def _drop_repeated_files(found: list[_Found]) -> list[_Found]:
    """Keep the first occurrence of each file (by real path)."""
    seen: set[str] = set()
    unique = []
    for f in found:
        key = str(f.path) if isinstance(f.path, RemotePath) else os.path.realpath(f.path)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _unique_rels(found: list[_Found]) -> list[PurePosixPath]:
    """Make output names unique, deterministically.

    Writers replace the extension, and file systems may ignore case, so `x.jpg`, `x.png`
    and `X.jpg` all clash. Clashing names first get their input's folder name in front
    (`a/x.jpg`, `b/x.jpg`); a name that still clashes with an earlier one gets a numbered
    folder in front (`2/a/x.jpg`), skipping numbers any other item already uses.
    """
    first_counts = Counter(_clash_key(f.rel) for f in found)
    rels = [
        PurePosixPath(f.anchor) / f.rel if first_counts[_clash_key(f.rel)] > 1 else f.rel
        for f in found
    ]
    pending = Counter(_clash_key(rel) for rel in rels)
    taken: set[str] = set()
    unique = []
    for rel in rels:
        pending[_clash_key(rel)] -= 1
        candidate, n = rel, 1
        while _clash_key(candidate) in taken or (n > 1 and pending[_clash_key(candidate)] > 0):
            n += 1
            candidate = PurePosixPath(str(n)) / rel
        taken.add(_clash_key(candidate))
        unique.append(candidate)
    return unique


def _clash_key(rel: PurePosixPath) -> str:
    return rel.with_suffix("").as_posix().casefold()


# --- small helpers -----------------------------------------------------------------


def _kind_of(name: str) -> Kind | None:
    suffix = os.path.splitext(name)[1].lower()
    for kind, exts in _EXTS.items():
        if suffix in exts:
            return kind
    return None


def _noun(kinds: frozenset[str]) -> str:
    if "frames" in kinds:
        kinds = kinds - {"frames"}
        return " or ".join([*(f"{k}s" for k in sorted(kinds)), "folders of image frames"])
    return " or ".join(f"{k}s" for k in sorted(kinds))


def _folder_name(folder: Path) -> str:
    """The folder's own name, also for `.` or `..`; a stand-in for the file system root."""
    return os.path.basename(os.path.realpath(folder)) or "root"


def _url_anchor(url: str) -> str:
    """A URL prefix's last component (its bucket for a bucket), for clashing names."""
    key = url.split("://", 1)[-1].rstrip("/")
    return key.rsplit("/", 1)[-1] or "root"


def _takewhile_literal(parts: Sequence[str]) -> list[str]:
    literal = []
    for part in parts:
        if _GLOB_MAGIC.search(part):
            break
        literal.append(part)
    return literal


def natural_path_key(rel: PurePosixPath) -> tuple[tuple[list[int | str], str], ...]:
    """Compare path components so that `img2` sorts before `img10`; ties broken exactly."""
    return tuple(
        (
            [int(t) if i % 2 else t.casefold() for i, t in enumerate(_DIGITS.split(part))],
            part,
        )
        for part in rel.parts
    )


# --- image ids given with the inputs (`--ann`) ---------------------------------------


def image_ids_from_annotations(ann_path: Path) -> dict[str, int]:
    """file_name -> image id from a COCO annotation file, plus basename -> id.

    Basenames are added only when no two images share one, so a folder run over
    `val2017/` matches COCO's plain file names while ambiguous names never guess.
    """
    data = read_coco_instances(ann_path, need=("images",))
    ids: dict[str, int] = {}
    by_base: dict[str, set[int]] = {}
    for entry in data["images"]:
        if not isinstance(entry.get("file_name"), str):
            raise MrcnnError(f"{ann_path}: image {entry['id']} has no 'file_name'")
        name = entry["file_name"].replace("\\", "/")
        ids[name] = entry["id"]
        by_base.setdefault(PurePosixPath(name).name, set()).add(entry["id"])
    for base, found in by_base.items():
        if len(found) == 1:
            ids.setdefault(base, next(iter(found)))
    return ids
