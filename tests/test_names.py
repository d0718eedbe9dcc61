"""display_name: any path -> printable, valid UTF-8 text on one line; OS error reasons."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from mrcnn_cli.errors import FailedItem
from mrcnn_cli.names import display_name, file_type_name, not_regular_reason, os_error_reason


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("photos/a.jpg", "photos/a.jpg"),
        ("été/日本.png", "été/日本.png"),
        (os.fsdecode(b"bad\xff\xfe.jpg"), "bad\\xff\\xfe.jpg"),
        (b"raw\xff.jpg", "raw\\xff.jpg"),
        (Path(os.fsdecode(b"dir\xc3/x.jpg")), "dir\\xc3/x.jpg"),
        ("two\nlines.jpg", "two\\nlines.jpg"),
        ("tab\there\r.jpg", "tab\\there\\r.jpg"),
        ("esc\x1b[31mred.jpg", "esc\\x1b[31mred.jpg"),
        ("del\x7f.jpg", "del\\x7f.jpg"),
        ("c1\x85.jpg", "c1\\x85.jpg"),
        ("ls\u2028ps\u2029.jpg", "ls\\u2028ps\\u2029.jpg"),
        ("gpj.\u202eexe", "gpj.\\u202eexe"),
        ("lone\ud800surrogate", "lone\\xed\\xa0\\x80surrogate"),
    ],
)
def test_display_name_is_printable_utf8_on_one_line(path, shown):
    text = display_name(path)
    assert text == shown
    text.encode("utf-8")  # never raises
    assert len(text.splitlines()) == 1
    assert text.isprintable()


def test_failed_item_display_fields_survive_json_and_print(capsys):
    item = FailedItem(Path(os.fsdecode(b"x\xff\n.jpg")), "cannot write outputs: x\udcff\n")
    line = json.dumps(
        {"path": item.display_path, "reason": item.display_reason}, ensure_ascii=False
    )
    line.encode("utf-8")
    assert "\n" not in line
    assert item.display_path == "x\\xff\\n.jpg"
    assert item.display_reason == "cannot write outputs: x\\xff\\n"


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        (stat.S_IFIFO, "fifo"),
        (stat.S_IFSOCK, "socket"),
        (stat.S_IFCHR, "character device"),
        (stat.S_IFBLK, "block device"),
        (stat.S_IFREG, "regular file"),
    ],
)
def test_file_type_names(mode, name):
    assert file_type_name(mode) == name


def test_not_regular_reason():
    assert not_regular_reason(stat.S_IFIFO) == "not a regular file (fifo)"
    assert not_regular_reason(stat.S_IFDIR) == "is a directory"


def test_os_error_reasons(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    missing = OSError(errno.ENOENT, "No such file or directory")
    assert os_error_reason(missing, tmp_path / "dangling") == "broken symbolic link"
    assert os_error_reason(missing, tmp_path / "nope") == "no such file or directory"
    assert os_error_reason(OSError(errno.ELOOP, "loop")) == "symbolic link loop"
    assert os_error_reason(PermissionError(errno.EACCES, "x")) == "permission denied"
    assert os_error_reason(OSError(errno.EIO, "Input/output error")) == "input/output error"
