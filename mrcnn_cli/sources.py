"""Expand the CLI's input arguments (files, folders, globs, .txt lists) into ordered items.

Every item carries `rel`, the relative path its outputs are named after. Two different
files must never share an output name, so colliding names are made unique here, once,
instead of in every writer.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from mrcnn_cli.errors import FailedItem

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
LIST_EXT = ".txt"

Kind = Literal["image", "video"]
_EXTS: dict[Kind, frozenset[str]] = {"image": IMAGE_EXTS, "video": VIDEO_EXTS}
_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class SourceItem:
    """One input file; `rel` (original extension kept) names its outputs."""

    path: Path
    rel: PurePosixPath
    kind: Kind


@dataclass(frozen=True)
class _Found:
    """An expanded file before de-duplication; `anchor` disambiguates a colliding `rel`."""

    path: Path
    rel: PurePosixPath
    kind: Kind
    anchor: str


def collect_sources(
    inputs: Sequence[str | Path], kinds: frozenset[str] = frozenset({"image"})
) -> tuple[list[SourceItem], list[FailedItem]]:
    """Expand `inputs` in the order given (each one sorted) into unique items and failures.

    `kinds` says which files a folder or glob yields ("image", "video" or both) and
    whether an explicitly named video is accepted.
    """
    unknown = set(kinds) - set(_EXTS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {sorted(_EXTS)}, got {kinds}")
    found: list[_Found] = []
    failed: list[FailedItem] = []
    for raw in inputs:
        _expand(Path(raw), str(raw), frozenset(kinds), found, failed, lists_open=())
    unique = _drop_repeated_files(found)
    rels = _unique_rels(unique)
    items = [SourceItem(f.path, rel, f.kind) for f, rel in zip(unique, rels, strict=True)]
    return items, failed


# --- expansion of one argument -----------------------------------------------------


def _expand(
    path: Path,
    raw: str,
    kinds: frozenset[str],
    found: list[_Found],
    failed: list[FailedItem],
    lists_open: tuple[Path, ...],
) -> None:
    """Append what one argument (or one line of a list file) stands for."""
    if path.is_dir():
        _expand_folder(path, kinds, found, failed)
    elif path.exists():
        if path.suffix.lower() == LIST_EXT:
            _expand_list(path, kinds, found, failed, lists_open)
        else:
            _expand_file(path, kinds, found, failed)
    elif _GLOB_MAGIC.search(raw):
        _expand_glob(raw, kinds, found, failed)
    elif path.is_symlink():
        failed.append(FailedItem(path, "broken symbolic link"))
    else:
        failed.append(FailedItem(path, "no such file or directory"))


def _expand_file(
    path: Path, kinds: frozenset[str], found: list[_Found], failed: list[FailedItem]
) -> None:
    """An explicitly named file is taken even with an odd extension: the decoder judges it."""
    kind = _kind_of(path)
    if kind is not None and kind not in kinds:
        hint = (
            "is a video; use `mrcnn video`"
            if kind == "video"
            else "is an image; use `mrcnn segment`"
        )
        failed.append(FailedItem(path, hint))
        return
    if kind is None:
        kind = "image" if "image" in kinds else "video"
    found.append(_Found(path, PurePosixPath(path.name), kind, _folder_name(path.parent)))


def _expand_folder(
    folder: Path, kinds: frozenset[str], found: list[_Found], failed: list[FailedItem]
) -> None:
    """Every matching file below `folder`; rel is relative to the folder."""
    failures_before = len(failed)
    matches = _walk_folder(folder, kinds, failed)
    if not matches and len(failed) == failures_before:
        failed.append(FailedItem(folder, f"no {_noun(kinds)} found in folder"))
    anchor = _folder_name(folder)
    for rel, kind in matches:
        found.append(_Found(folder / rel, rel, kind, anchor))


def _walk_folder(
    folder: Path, kinds: frozenset[str], failed: list[FailedItem]
) -> list[tuple[PurePosixPath, Kind]]:
    """Recursive walk in natural order, hidden entries skipped, unreadable folders reported.

    Symbolic links to folders are not followed (they could loop); links to files are taken.
    """

    def on_error(exc: OSError) -> None:
        failed.append(FailedItem(Path(exc.filename), _os_reason("cannot read folder", exc)))

    matches: list[tuple[PurePosixPath, Kind]] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = PurePosixPath(Path(dirpath).relative_to(folder).as_posix())
        for name in filenames:
            kind = _kind_of(Path(name))
            if kind in kinds and not name.startswith("."):
                matches.append((base / name, kind))
    return sorted(matches, key=lambda m: _natural_path_key(m[0]))


def _expand_glob(
    pattern: str, kinds: frozenset[str], found: list[_Found], failed: list[FailedItem]
) -> None:
    """`**` recurses; matched folders are walked; rel is relative to the literal prefix."""
    literal = _takewhile_literal(Path(pattern).parts)
    base = Path(*literal) if literal else Path(".")
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
    if not matches:
        failed.append(FailedItem(pattern, "no files match this pattern"))
        return
    files: list[tuple[PurePosixPath, Kind]] = []
    for match in matches:
        rel = PurePosixPath(match.relative_to(base).as_posix())
        if match.is_dir():
            files.extend((rel / sub, kind) for sub, kind in _walk_folder(match, kinds, failed))
        elif (kind := _kind_of(match)) in kinds:
            files.append((rel, kind))
    if not files:
        failed.append(FailedItem(pattern, f"no {_noun(kinds)} match this pattern"))
        return
    anchor = _folder_name(base)
    for rel, kind in sorted(files, key=lambda m: _natural_path_key(m[0])):
        found.append(_Found(base / rel, rel, kind, anchor))


def _expand_list(
    list_file: Path,
    kinds: frozenset[str],
    found: list[_Found],
    failed: list[FailedItem],
    lists_open: tuple[Path, ...],
) -> None:
    """One path per line, `#` comments and blank lines skipped, relative to the list's folder."""
    resolved = list_file.resolve()
    if resolved in lists_open:
        failed.append(FailedItem(list_file, "list file includes itself"))
        return
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        failed.append(FailedItem(list_file, _os_reason("cannot read list file", exc)))
        return
    entries = [line.strip() for line in lines]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        failed.append(FailedItem(list_file, "list file names no paths"))
        return
    for entry in entries:
        path = Path(os.path.expanduser(entry))
        if not path.is_absolute():
            path = list_file.parent / path
        _expand(path, str(path), kinds, found, failed, (*lists_open, resolved))


# --- de-duplication and unique output names ----------------------------------------


def _drop_repeated_files(found: list[_Found]) -> list[_Found]:
    """Keep the first occurrence of each file (by resolved path)."""
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.path.resolve()
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


def _kind_of(path: Path) -> Kind | None:
    suffix = path.suffix.lower()
    for kind, exts in _EXTS.items():
        if suffix in exts:
            return kind
    return None


def _noun(kinds: frozenset[str]) -> str:
    return " or ".join(f"{k}s" for k in sorted(kinds))


def _folder_name(folder: Path) -> str:
    """The folder's own name, also for `.` or `..`; a stand-in for the file system root."""
    return folder.resolve().name or "root"


def _takewhile_literal(parts: Sequence[str]) -> list[str]:
    literal = []
    for part in parts:
        if _GLOB_MAGIC.search(part):
            break
        literal.append(part)
    return literal


def _natural_path_key(rel: PurePosixPath) -> tuple[tuple[list[int | str], str], ...]:
    """Compare path components so that `img2` sorts before `img10`; ties broken exactly."""
    return tuple(
        (
            [int(t) if i % 2 else t.casefold() for i, t in enumerate(_DIGITS.split(part))],
            part,
        )
        for part in rel.parts
    )


def _os_reason(what: str, exc: Exception) -> str:
    if isinstance(exc, PermissionError):
        return f"{what}: permission denied"
    if isinstance(exc, UnicodeDecodeError):
        return f"{what}: not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{what}: {exc.strerror.lower()}"
    return what
