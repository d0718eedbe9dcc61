"""Inputs in object storage (`s3://`, `gs://`, `az://`, `http(s)://`), read through fsspec.

A URL stands for what a local argument would: a prefix (ending in `/`, or a key that
is a "folder" in the listing) for every image under it, named after its key below the
prefix (`s3://b/set/a/x.jpg` under `s3://b/set/` -> `a/x.jpg`); a URL to one object for
that image, named after its last component.

Why fsspec: one interface over s3fs, gcsfs, adlfs and HTTP, each with the backend's own
credential chain (environment, profile, instance role, workload identity). Nothing here
takes credentials; endpoints come from the environment too (`AWS_ENDPOINT_URL`, or
fsspec's `FSSPEC_S3_ENDPOINT_URL`-style variables for any backend option).

The resume stamp of an object is its ETag (`etag:<value>`), which changes whenever the
object is rewritten; where a backend gives none, its size and modification time. The
stamp is taken from the listing, before the object is read, so an object replaced while
it is processed is redone by the next run rather than trusted. A read is one ranged GET
(no HEAD first), bounded to the decoder's byte limit.

Every problem is one line for that input: a missing bucket or key, a denied read, a
network error. fsspec and its backends are imported only when a URL is met.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
INSTALL_HINT = 'pip install "mrcnn-cli[cloud]"'
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class RemotePath(str):
    """An object's URL, where a local input has a `Path`; `stamp` as listed (or None).

    A `str` so that everything that prints, compares or stores input paths takes it as
    it is; the few path operations the collector uses are here.
    """

    stamp: str | None

    def __new__(cls, url: str, stamp: str | None = None) -> RemotePath:
        self = super().__new__(cls, url)
        self.stamp = stamp
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemotePath, (str(self), self.stamp))

    @property
    def name(self) -> str:
        return posixpath.basename(_key_of(self).rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def resolve(self) -> RemotePath:
        return self


class RemoteError(Exception):
    """One input in object storage that cannot be listed or read; str() is the reason."""


def is_url(text: object) -> bool:
    """Whether an input argument (or a list file's line) is a URL we read with fsspec."""
    if isinstance(text, RemotePath):
        return True
    if not isinstance(text, str):
        return False
    match = _URL.match(text)
    return match is not None and match.group(1).lower() in PROTOCOLS


def as_source_path(text: str) -> Path | RemotePath:
    """An input path sent as a string (to a Ray worker) back as the collector made it."""
    return RemotePath(text) if is_url(text) else Path(text)


def _key_of(url: str) -> str:
    """The part after `scheme://` (bucket and key, or host and path)."""
    return url.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec.core
    except ImportError as exc:
        raise RemoteError(f"reading URLs needs fsspec (not installed): {INSTALL_HINT}") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # fsspec knows the protocol, its backend is not installed
        raise RemoteError(f"{_first_line(exc)}: {INSTALL_HINT}") from exc
    except (ValueError, TypeError) as exc:
        raise RemoteError(f"not a valid URL ({_first_line(exc)})") from exc


def object_stamp(info: dict[str, Any]) -> str | None:
    """A listing entry's resume stamp: its ETag, else size and modification time."""
    lowered = {str(k).lower(): v for k, v in info.items()}
    for key in ("etag", "md5hash", "content_md5"):
        value = lowered.get(key)
        if value:
            return f"etag:{str(value).strip(chr(34))}"
    size = lowered.get("size")
    for key in ("lastmodified", "last_modified", "updated", "mtime", "last-modified"):
        value = lowered.get(key)
        if value:
            return f"{size}:{value}"
    return None


def reason_of(exc: BaseException) -> str:
    """One line for a failed listing or read, by what the backend raised."""
    if isinstance(exc, RemoteError):
        return str(exc)
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and isinstance(cause, OSError):
        exc = cause  # fsspec's HTTP backend says "not found" for a refused connection too
    if isinstance(exc, FileNotFoundError):
        return "no such bucket, prefix or object"
    if isinstance(exc, PermissionError):
        return f"access denied ({_first_line(exc)})"
    return f"cannot reach the object store: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def list_objects(url: str) -> tuple[list[tuple[RemotePath, str]], bool]:
    """The objects a URL stands for, each with its key below the URL: ([(object, rel)],
    is_prefix). A prefix is walked recursively; a URL to one object is that object.

    Raises `RemoteError` with the one-line reason (missing bucket, denied, network).
    """
    fs, path = _filesystem(url)
    try:
        fs.invalidate_cache()  # a long-lived process must see the store as it is now
        if not url.endswith("/"):
            info = fs.info(path)
            if info.get("type") != "directory":
                return [(RemotePath(url, object_stamp(info)), RemotePath(url).name)], False
        found = fs.find(path, detail=True)
    except RemoteError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, azure: any failure is one line
        raise RemoteError(reason_of(exc)) from exc
    prefix = path.rstrip("/") + "/"
    objects = []
    for name, info in found.items():
        if info.get("type", "file") != "file" or not name.startswith(prefix):
            continue
        rel = name[len(prefix) :]
        full = url.rstrip("/") + "/" + rel if "://" not in name else name
        objects.append((RemotePath(full, object_stamp(info)), rel))
    return objects, True


def object_info_stamp(url: str) -> str | None:
    """The stamp of one object, asked for (a worker given a URL without its listing)."""
    try:
        fs, path = _filesystem(url)
        return object_stamp(fs.info(path))
    except Exception:  # noqa: BLE001 - no stamp: the read that follows says what is wrong
        return None


def read_object(url: str, max_bytes: int) -> bytes:
    """The whole object if it has at most `max_bytes` bytes: one ranged GET.

    Raises `RemoteError` with the one-line reason.
    """
    fs, path = _filesystem(url)
    try:
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    except Exception as exc:  # noqa: BLE001 - see list_objects
        raise RemoteError(reason_of(exc)) from exc
    if len(data) > max_bytes:
        raise RemoteError(f"file too large: more than the {max_bytes:,}-byte limit")
    return bytes(data)
