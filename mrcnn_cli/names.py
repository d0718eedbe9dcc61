"""How paths and file problems are put into words for messages, logs and JSON.

A file name on Linux is any bytes but `/` and NUL: it may not be UTF-8 (Python hands such
names over as `str` with lone surrogates, which crash `print` and UTF-8 encoding), and it
may hold newlines or terminal control codes. `display_name` renders any path as printable,
valid UTF-8 text on one line, so one failure is always one line of a summary or a JSONL
report. It is for showing a path, not for opening it: keep the original path for that.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import PurePosixPath

# Characters that would break a line or fool a terminal or a reader: C0/C1 controls and
# DEL, the Unicode line and paragraph separators, and the bidirectional overrides that can
# make a name read backwards ("trojan source" names).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

MISSING = "no such file or directory"


def display_name(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    r"""`path` as printable UTF-8 text on one line.

    Bytes that are not UTF-8 appear as `\xff` escapes; newlines and tabs as `\n`, `\r`,
    `\t`; other control characters as `\x1b` or `\u202e`. Backslashes are kept as they
    are, so a name that really contains the text `\xff` looks the same as one holding the
    byte 0xFF: good enough for a message, and the price of keeping ordinary names legible.
    Works for any text that may carry a file name, such as an exception message.
    """
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a str with surrogates that did not come from a file name
        raw = os.fspath(path).encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def file_type_name(mode: int) -> str:
    """What kind of file `st_mode` describes, in words ("fifo", "character device", ...)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"


def not_regular_reason(mode: int) -> str:
    """The one-line reason for refusing to read something that is not a regular file."""
    if stat.S_ISDIR(mode):
        return "is a directory"
    return f"not a regular file ({file_type_name(mode)})"


def os_error_reason(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """A short reason for an `OSError` raised about `path`, without the path itself.

    A missing target behind an existing link is a "broken symbolic link"; ELOOP (a link
    that points back at itself, directly or through others) a "symbolic link loop".
    """
    code = exc.errno
    if code == errno.ELOOP:
        return "symbolic link loop"
    if code == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return "broken symbolic link"
        return MISSING
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EISDIR:
        return "is a directory"
    if code == errno.ENOTDIR:
        return "a part of the path is not a directory"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    if exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def safe_rel(rel: PurePosixPath | str) -> PurePosixPath:
    """`rel` as a relative POSIX path, refusing anything that could escape the output folder.

    Relative paths come from the input walk; a bug there must not write outside `out/`.
    """
    rel = PurePosixPath(rel)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.name in ("", "."):
        raise ValueError(f"not a safe relative path for an output file: {str(rel)!r}")
    return rel
