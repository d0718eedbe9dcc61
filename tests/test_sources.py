"""collect_sources: CLI inputs (files, folders, globs, .txt lists) -> ordered unique items."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from mrcnn_cli.errors import FailedItem
from mrcnn_cli.sources import SourceItem, collect_sources

BOTH = frozenset({"image", "video"})


def touch(root: Path, *rels: str) -> list[Path]:
    paths = []
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        paths.append(path)
    return paths


def rels(items: list[SourceItem]) -> list[str]:
    return [item.rel.as_posix() for item in items]


# --- single files -------------------------------------------------------------------


def test_a_file_gives_one_item_named_after_the_file(tmp_path):
    (path,) = touch(tmp_path, "deep/dir/a.jpg")
    items, failed = collect_sources([path])
    assert items == [SourceItem(path, PurePosixPath("a.jpg"), "image")]
    assert failed == []


def test_a_string_argument_works_like_a_path(tmp_path):
    (path,) = touch(tmp_path, "a.png")
    items, _ = collect_sources([str(path)])
    assert items[0].path == path


def test_an_explicit_file_with_an_odd_extension_is_passed_on_as_an_image(tmp_path):
    (path,) = touch(tmp_path, "scan.jp2")
    items, failed = collect_sources([path])
    assert items == [SourceItem(path, PurePosixPath("scan.jp2"), "image")]
    assert failed == []


def test_an_explicit_video_is_refused_when_only_images_are_wanted(tmp_path):
    (path,) = touch(tmp_path, "clip.MP4")
    items, failed = collect_sources([path])
    assert items == []
    assert failed == [FailedItem(path, "is a video; use `mrcnn video`")]


def test_an_explicit_video_is_taken_when_videos_are_wanted(tmp_path):
    (path,) = touch(tmp_path, "clip.mkv")
    items, failed = collect_sources([path], kinds=frozenset({"video"}))
    assert items == [SourceItem(path, PurePosixPath("clip.mkv"), "video")]
    assert failed == []


def test_an_explicit_image_is_refused_when_only_videos_are_wanted(tmp_path):
    (path,) = touch(tmp_path, "a.jpg")
    items, failed = collect_sources([path], kinds=frozenset({"video"}))
    assert items == []
    assert failed == [FailedItem(path, "is an image; use `mrcnn segment`")]


def test_a_missing_path_is_reported(tmp_path):
    items, failed = collect_sources([tmp_path / "nope.jpg"])
    assert items == []
    assert failed == [FailedItem(tmp_path / "nope.jpg", "no such file or directory")]


def test_unknown_kinds_are_a_programming_error():
    with pytest.raises(ValueError):
        collect_sources([], kinds=frozenset({"audio"}))


# --- folders ------------------------------------------------------------------------


def test_a_folder_is_walked_recursively_in_natural_order(tmp_path):
    touch(tmp_path, "img10.jpg", "img2.jpg", "b/c.png", "a.jpg", "b/a/z.jpg", "img1.jpg")
    items, failed = collect_sources([tmp_path])
    assert rels(items) == ["a.jpg", "b/a/z.jpg", "b/c.png", "img1.jpg", "img2.jpg", "img10.jpg"]
    assert [item.path for item in items] == [tmp_path / r for r in rels(items)]
    assert failed == []


def test_folder_extensions_match_case_insensitively(tmp_path):
    touch(tmp_path, "a.JPG", "b.Png", "c.TIFF", "d.jpeg", "e.WebP", "f.bmp", "g.tif")
    items, _ = collect_sources([tmp_path])
    assert len(items) == 7


def test_folder_skips_hidden_files_and_hidden_folders(tmp_path):
    touch(tmp_path, "seen.jpg", ".hidden.jpg", ".cache/x.jpg", "sub/.thumb/y.jpg")
    items, _ = collect_sources([tmp_path])
    assert rels(items) == ["seen.jpg"]


def test_folder_skips_files_of_kinds_not_requested(tmp_path):
    touch(tmp_path, "a.jpg", "notes.txt", "clip.mp4", "data.json")
    items, _ = collect_sources([tmp_path])
    assert rels(items) == ["a.jpg"]


def test_folder_yields_only_videos_when_only_videos_are_requested(tmp_path):
    touch(tmp_path, "a.jpg", "clip.MOV", "b/clip2.webm")
    items, _ = collect_sources([tmp_path], kinds=frozenset({"video"}))
    assert [(i.rel.as_posix(), i.kind) for i in items] == [
        ("b/clip2.webm", "video"),
        ("clip.MOV", "video"),
    ]


def test_folder_yields_both_kinds_when_both_are_requested(tmp_path):
    touch(tmp_path, "a.jpg", "clip.avi")
    items, _ = collect_sources([tmp_path], kinds=BOTH)
    assert [(i.rel.as_posix(), i.kind) for i in items] == [
        ("a.jpg", "image"),
        ("clip.avi", "video"),
    ]


def test_an_empty_folder_is_reported(tmp_path):
    touch(tmp_path, "readme.txt", ".hidden.jpg")
    items, failed = collect_sources([tmp_path])
    assert items == []
    assert failed == [FailedItem(tmp_path, "no images found in folder")]


def test_an_unreadable_subfolder_is_reported_and_the_rest_is_still_taken(tmp_path, monkeypatch):
    touch(tmp_path, "a.jpg", "locked/b.jpg", "open/c.jpg")
    deny_scandir(monkeypatch, tmp_path / "locked")
    items, failed = collect_sources([tmp_path])
    assert rels(items) == ["a.jpg", "open/c.jpg"]
    assert failed == [FailedItem(tmp_path / "locked", "cannot read folder: permission denied")]


def test_an_unreadable_folder_is_one_failure_not_a_crash(tmp_path, monkeypatch):
    touch(tmp_path, "locked/b.jpg")
    deny_scandir(monkeypatch, tmp_path / "locked")
    items, failed = collect_sources([tmp_path / "locked"])
    assert items == []
    assert failed == [FailedItem(tmp_path / "locked", "cannot read folder: permission denied")]


def deny_scandir(monkeypatch, locked: Path) -> None:
    """Tests may run as root, where chmod cannot lock a folder: simulate the OS error."""
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


# --- globs --------------------------------------------------------------------------


def test_a_glob_with_double_star_recurses_and_names_relative_to_its_literal_prefix(tmp_path):
    touch(tmp_path, "data/a.jpg", "data/x/b.jpg", "data/x/y/c.jpg", "data/x/y/skip.png")
    items, failed = collect_sources([f"{tmp_path}/data/**/*.jpg"])
    assert rels(items) == ["a.jpg", "x/b.jpg", "x/y/c.jpg"]
    assert items[1].path == tmp_path / "data/x/b.jpg"
    assert failed == []


def test_a_glob_keeps_only_requested_kinds(tmp_path):
    touch(tmp_path, "a.jpg", "b.mp4", "c.txt")
    items, _ = collect_sources([f"{tmp_path}/*"])
    assert rels(items) == ["a.jpg"]


def test_a_glob_matching_folders_walks_them(tmp_path):
    touch(tmp_path, "runs/r1/images/a.jpg", "runs/r2/images/b.jpg", "runs/r2/logs/x.jpg")
    items, _ = collect_sources([f"{tmp_path}/runs/*/images"])
    assert rels(items) == ["r1/images/a.jpg", "r2/images/b.jpg"]


def test_a_glob_matching_nothing_is_reported(tmp_path):
    pattern = f"{tmp_path}/*.jpg"
    items, failed = collect_sources([pattern])
    assert items == []
    assert failed == [FailedItem(pattern, "no files match this pattern")]


def test_a_glob_matching_only_other_files_is_reported(tmp_path):
    touch(tmp_path, "notes.txt")
    pattern = f"{tmp_path}/*"
    _, failed = collect_sources([pattern])
    assert failed == [FailedItem(pattern, "no images match this pattern")]


def test_an_existing_file_with_glob_characters_in_its_name_is_taken_literally(tmp_path):
    (path,) = touch(tmp_path, "photo[1].jpg")
    touch(tmp_path, "photo1.jpg")
    items, _ = collect_sources([str(path)])
    assert [item.path for item in items] == [path]


# --- .txt lists ---------------------------------------------------------------------


def test_a_txt_list_skips_comments_and_resolves_relative_lines_against_its_folder(tmp_path):
    a, b, other = touch(tmp_path, "lists/a.jpg", "lists/sub/b.png", "elsewhere/c.jpg")
    touch(tmp_path, "lists/folder/d.jpg", "lists/globbed/e.jpg")
    listing = tmp_path / "lists" / "inputs.txt"
    listing.write_text(
        f"# my inputs\na.jpg\n\n   sub/b.png  \n{other}\nfolder\nglobbed/*.jpg\nmissing.jpg\n"
    )
    items, failed = collect_sources([listing])
    assert [i.path for i in items] == [
        a,
        b,
        other,
        tmp_path / "lists/folder/d.jpg",
        tmp_path / "lists/globbed/e.jpg",
    ]
    assert rels(items) == ["a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg"]
    assert failed == [FailedItem(tmp_path / "lists/missing.jpg", "no such file or directory")]


def test_a_txt_list_that_lists_itself_is_reported_once(tmp_path):
    (image,) = touch(tmp_path, "a.jpg")
    listing = tmp_path / "self.txt"
    listing.write_text("a.jpg\nself.txt\n")
    items, failed = collect_sources([listing])
    assert [i.path for i in items] == [image]
    assert failed == [FailedItem(listing, "list file includes itself")]


def test_an_empty_txt_list_is_reported(tmp_path):
    listing = tmp_path / "empty.txt"
    listing.write_text("# nothing yet\n\n")
    items, failed = collect_sources([listing])
    assert items == []
    assert failed == [FailedItem(listing, "list file names no paths")]


# --- order, duplicates and unique output names ----------------------------------------


def test_inputs_keep_the_order_given(tmp_path):
    touch(tmp_path, "b/1.jpg", "b/2.jpg", "a/3.jpg")
    items, _ = collect_sources([tmp_path / "b", tmp_path / "a"])
    assert rels(items) == ["1.jpg", "2.jpg", "3.jpg"]


def test_the_same_file_reached_twice_is_kept_once_at_its_first_occurrence(tmp_path):
    a, b = touch(tmp_path, "imgs/a.jpg", "imgs/b.jpg")
    items, failed = collect_sources([b, tmp_path / "imgs", tmp_path / "imgs" / ".." / "imgs/b.jpg"])
    assert [i.path for i in items] == [b, a]
    assert rels(items) == ["b.jpg", "a.jpg"]
    assert failed == []


def test_same_named_files_from_different_folders_get_their_folder_in_front(tmp_path):
    a, b = touch(tmp_path, "a/x.jpg", "b/x.jpg")
    items, _ = collect_sources([a, b])
    assert rels(items) == ["a/x.jpg", "b/x.jpg"]


def test_two_folders_holding_the_same_file_name_keep_outputs_apart(tmp_path):
    touch(tmp_path, "cam1/x.jpg", "cam1/y.jpg", "cam2/x.jpg")
    items, _ = collect_sources([tmp_path / "cam1", tmp_path / "cam2"])
    assert rels(items) == ["cam1/x.jpg", "y.jpg", "cam2/x.jpg"]


def test_names_differing_only_by_extension_or_case_are_made_unique(tmp_path):
    """Writers replace the extension, and some file systems ignore case."""
    touch(tmp_path, "d/x.jpg", "d/x.png", "d/X.bmp")
    items, _ = collect_sources([tmp_path / "d"])
    keys = {item.rel.with_suffix("").as_posix().casefold() for item in items}
    assert len(keys) == 3
    assert rels(items) == ["d/X.bmp", "2/d/x.jpg", "3/d/x.png"]


def test_a_folder_prefix_that_still_clashes_gets_a_numbered_prefix(tmp_path):
    first, second = touch(tmp_path, "a/x.jpg", "b/a/x.jpg")
    items, _ = collect_sources([first, second])
    assert rels(items) == ["a/x.jpg", "2/a/x.jpg"]


def test_a_numbered_prefix_never_takes_a_name_a_later_item_uses(tmp_path):
    first, second = touch(tmp_path, "p/a/x.jpg", "q/a/x.jpg")
    touch(tmp_path, "top/2/a/x.jpg")
    items, _ = collect_sources([first, second, tmp_path / "top"])
    assert rels(items) == ["a/x.jpg", "3/a/x.jpg", "2/a/x.jpg"]


def test_a_relative_glob_gives_relative_paths(tmp_path, monkeypatch):
    touch(tmp_path, "imgs/b.jpg", "imgs/a.jpg")
    monkeypatch.chdir(tmp_path)
    items, _ = collect_sources(["imgs/*.jpg"])
    assert [item.path for item in items] == [Path("imgs/a.jpg"), Path("imgs/b.jpg")]
    assert rels(items) == ["a.jpg", "b.jpg"]


# --- only regular files, links that resolve ----------------------------------------------


def test_a_fifo_in_a_folder_is_reported_and_never_opened(tmp_path):
    (image,) = touch(tmp_path, "a.jpg")
    os.mkfifo(tmp_path / "b.jpg")
    os.mkfifo(tmp_path / "notes.fifo")  # not an image name: passed over silently
    items, failed = collect_sources([tmp_path])
    assert [i.path for i in items] == [image]
    assert failed == [FailedItem(tmp_path / "b.jpg", "not a regular file (fifo)")]


def test_a_device_named_explicitly_is_refused():
    items, failed = collect_sources(["/dev/zero"])
    assert items == []
    assert failed == [FailedItem(Path("/dev/zero"), "not a regular file (character device)")]


def test_link_loops_and_dangling_links_are_failures_not_crashes(tmp_path):
    folder = tmp_path / "photos"
    (real,) = touch(tmp_path, "elsewhere/d.jpg")
    folder.mkdir()
    (folder / "a.jpg").symlink_to(folder / "b.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    (folder / "c.jpg").symlink_to(folder / "gone.jpg")
    (folder / "e.jpg").symlink_to(real)  # a link to a file is taken
    items, failed = collect_sources([folder])
    assert [(i.path, i.rel.as_posix()) for i in items] == [(folder / "e.jpg", "e.jpg")]
    assert failed == [
        FailedItem(folder / "a.jpg", "symbolic link loop"),
        FailedItem(folder / "b.jpg", "symbolic link loop"),
        FailedItem(folder / "c.jpg", "broken symbolic link"),
    ]
    items, failed = collect_sources([folder / "a.jpg", f"{folder}/[ab].jpg"])
    assert items == []
    assert failed == [
        FailedItem(folder / "a.jpg", "symbolic link loop"),
        FailedItem(folder / "a.jpg", "symbolic link loop"),
        FailedItem(folder / "b.jpg", "symbolic link loop"),
        FailedItem(f"{folder}/[ab].jpg", "no images match this pattern"),
    ]


def test_a_list_file_must_be_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "inputs.txt")
    items, failed = collect_sources([tmp_path / "inputs.txt"])
    assert items == []
    assert failed == [FailedItem(tmp_path / "inputs.txt", "not a regular file (fifo)")]


def test_a_list_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    from mrcnn_cli import sources

    monkeypatch.setattr(sources, "LIST_FILE_MAX_BYTES", 10)
    listing = tmp_path / "big.txt"
    listing.write_text("a.jpg\nb.jpg\nc.jpg\n")
    _, failed = collect_sources([listing])
    assert failed == [
        FailedItem(
            listing, "cannot read list file: file too large: 18 bytes exceeds the 10-byte limit"
        )
    ]


def test_a_double_star_glob_does_not_follow_links_to_folders(tmp_path):
    touch(tmp_path, "d/x.jpg", "d/sub/y.jpg", "d/.hidden/z.jpg")
    (tmp_path / "d/loop1").symlink_to(tmp_path / "d")
    (tmp_path / "d/loop2").symlink_to(tmp_path / "d")
    items, failed = collect_sources([f"{tmp_path}/d/**/*.jpg"])
    assert rels(items) == ["sub/y.jpg", "x.jpg"]
    assert failed == []
    items, _ = collect_sources([f"{tmp_path}/d/**/x**.jpg"])  # `**` in a name: like `*`
    assert rels(items) == ["x.jpg"]


# --- file names too long for outputs -----------------------------------------------------


def test_the_name_limit_leaves_room_for_output_suffixes_and_temp_names(tmp_path):
    from mrcnn_cli.sources import OUTPUT_NAME_OVERHEAD, max_input_name_bytes

    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert max_input_name_bytes(tmp_path) == name_max - OUTPUT_NAME_OVERHEAD
    assert max_input_name_bytes(tmp_path / "not" / "yet") == name_max - OUTPUT_NAME_OVERHEAD
    # the longest name an output gets: a video's predictions, written atomically
    stem = "s" * (max_input_name_bytes(tmp_path) - len(".mkv"))
    temp = f".{stem}.predictions.json.XXXXXXXX.json"
    assert len(temp) <= name_max


def test_a_name_too_long_for_its_outputs_is_a_failure(tmp_path):
    ok_name = "o" * 11 + ".jpg"
    long_name = "l" * 12 + ".jpg"
    ok, long = touch(tmp_path, ok_name, long_name)
    items, failed = collect_sources([tmp_path], max_name_bytes=15)
    assert [i.path for i in items] == [ok]
    assert failed == [FailedItem(long, "file name too long for outputs (16 bytes; limit 15)")]


def test_the_name_limit_counts_bytes_not_characters(tmp_path):
    (path,) = touch(tmp_path, "é" * 8 + ".jpg")  # 12 characters, 20 bytes
    _, failed = collect_sources([path], max_name_bytes=19)
    assert failed == [FailedItem(path, "file name too long for outputs (20 bytes; limit 19)")]


def test_a_name_that_is_not_utf8_is_taken(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")
    (path,) = touch(tmp_path, name)
    items, failed = collect_sources([tmp_path])
    assert [i.path for i in items] == [path]
    assert items[0].rel == PurePosixPath(name)
    assert failed == []


# --- the output folder is never input ------------------------------------------------------


def test_a_walk_skips_the_excluded_output_folder(tmp_path):
    touch(tmp_path, "photos/a.jpg", "photos/results/overlays/a.jpg", "photos/sub/b.jpg")
    items, failed = collect_sources([tmp_path / "photos"], exclude=[tmp_path / "photos/results"])
    assert rels(items) == ["a.jpg", "sub/b.jpg"]
    assert failed == []


def test_an_explicit_file_or_folder_inside_the_output_folder_is_a_failure(tmp_path):
    (inside,) = touch(tmp_path, "out/overlays/a.jpg")
    out = tmp_path / "out"
    items, failed = collect_sources([inside, out, out / "overlays"], exclude=[out])
    assert items == []
    assert failed == [
        FailedItem(inside, "is inside the output folder"),
        FailedItem(out, "is inside the output folder"),
        FailedItem(out / "overlays", "is inside the output folder"),
    ]


def test_exclusion_compares_real_paths(tmp_path, monkeypatch):
    touch(tmp_path, "photos/a.jpg", "photos/results/x.jpg")
    (tmp_path / "alias").symlink_to(tmp_path / "photos")
    (tmp_path / "photos/link.jpg").symlink_to(tmp_path / "photos/results/x.jpg")
    monkeypatch.chdir(tmp_path)
    items, failed = collect_sources(["photos", "alias/*"], exclude=["alias/results"])
    assert [i.path for i in items] == [Path("photos/a.jpg")]
    assert failed == []
    _, failed = collect_sources(["alias/results/x.jpg"], exclude=[tmp_path / "photos/results"])
    assert failed == [FailedItem(Path("alias/results/x.jpg"), "is inside the output folder")]


def test_an_output_folder_that_does_not_exist_yet_excludes_nothing(tmp_path):
    touch(tmp_path, "photos/a.jpg")
    items, _ = collect_sources([tmp_path / "photos"], exclude=[tmp_path / "photos/results"])
    assert rels(items) == ["a.jpg"]
