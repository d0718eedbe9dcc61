"""`--shard K/N` and `mrcnn merge`: disjoint shards that cover the inputs, merged output
equal to one unsharded run, and the refusals (missing shard, other settings, doubled,
unfinished)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import pytest
from helpers import COCO_IMAGES, invoke_cli, json_summary, needs_coco
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.journal import Journal
from mrcnn_cli.shards import ShardSpec, shard_file_name, shard_of
from mrcnn_cli.sources import SourceItem

IMAGES = sorted(COCO_IMAGES.glob("*.jpg"))[:7]
N = 3


def segment_args(checkpoint: Path, out: Path, *inputs, extra=()) -> list:
    return ["segment", *inputs, "--model", checkpoint, "--device", "cpu", "--score-thr", "0",
            "--max-det", "5", "--save", "overlay,masks,coco,csv,cvat", "--out", out, "--json",
            *extra]  # fmt: skip


def output_files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".mrcnn" not in p.relative_to(out).parts
    }


# --- choosing a shard --------------------------------------------------------------


def items_for(rels: list[str]) -> list[SourceItem]:
    return [SourceItem(Path("/in") / rel, PurePosixPath(rel), "image") for rel in rels]


rel_lists = st.lists(
    st.from_regex(r"[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}\.jpg", fullmatch=True), unique=True
)


@given(rels=rel_lists, count=st.integers(1, 9))
def test_shards_are_disjoint_and_together_are_all_inputs(rels, count):
    items = items_for(rels)
    parts = [ShardSpec(k, count).select(items) for k in range(count)]
    chosen = [str(it.rel) for part in parts for it in part]
    assert sorted(chosen) == sorted(rels)  # every input once: disjoint, and the union is all
    for part in parts:  # each shard keeps input order
        assert [str(it.rel) for it in part] == [r for r in rels if r in {str(i.rel) for i in part}]


@given(rels=rel_lists, count=st.integers(1, 9))
def test_the_shard_of_an_input_does_not_depend_on_the_list_order(rels, count):
    forward = {str(it.rel): shard_of(it.rel, count) for it in items_for(rels)}
    backward = {str(it.rel): shard_of(it.rel, count) for it in items_for(rels[::-1])}
    assert forward == backward


def test_the_shard_of_an_input_is_the_same_on_every_machine():
    """sha256 of the relative path: pinned, so a change of rule cannot pass unnoticed."""
    assert [shard_of(rel, 3) for rel in ("a.jpg", "b/c.png", "000000000139.jpg")] == [1, 1, 0]


@pytest.mark.parametrize("text", ["3/3", "-1/3", "a/b", "1/0", "2", "1/2/3", ""])
def test_bad_shard_specs_are_refused(text):
    with pytest.raises(MrcnnError):
        ShardSpec.parse(text)


def test_shard_file_names_carry_the_shard():
    assert shard_file_name("predictions.json", ShardSpec(1, 4)) == "predictions.shard-1-of-4.json"
    assert shard_file_name("failures.jsonl", None) == "failures.jsonl"


@pytest.mark.parametrize("spec", ["3/3", "x"])
@needs_coco
def test_a_bad_shard_option_is_a_one_line_usage_error(tiny_checkpoint, tmp_path, spec):
    result = invoke_cli(segment_args(tiny_checkpoint, tmp_path, IMAGES[0], extra=["--shard", spec]))
    assert result.exit_code == 2
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert "K in 0..N-1" in result.stderr


@needs_coco
def test_shard_and_engine_ray_do_not_mix(tiny_checkpoint, tmp_path):
    extra = ["--shard", "0/2", "--engine", "ray"]
    result = invoke_cli(segment_args(tiny_checkpoint, tmp_path, IMAGES[0], extra=extra))
    assert result.exit_code == 2 and "--shard" in result.stderr


# --- shards merged = one run ---------------------------------------------------------


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "empty.jpg"
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def inputs(bad_file) -> list[Path]:
    return [*IMAGES, bad_file]


@pytest.fixture(scope="module")
def unsharded(tiny_checkpoint, inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    result = invoke_cli(segment_args(tiny_checkpoint, out, *inputs))
    assert result.exit_code == 1, result.output  # the bad file
    return out


@pytest.fixture(scope="module")
def shards(tiny_checkpoint, inputs, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("shards")
    outs = []
    for k in range(N):
        out = base / f"s{k}"
        result = invoke_cli(
            segment_args(tiny_checkpoint, out, *inputs, extra=["--shard", f"{k}/{N}"])
        )
        assert result.exit_code in (0, 1), result.output
        outs.append(out)
    return outs


@needs_coco
def test_each_shard_processes_a_disjoint_part_and_together_all(shards):
    seen: list[str] = []
    for k, out in enumerate(shards):
        manifest = json.loads((out / ".mrcnn" / "shards" / f"shard-{k}-of-{N}.json").read_text())
        assert (manifest["shard"], manifest["num_shards"]) == (k, N)
        assert manifest["total_inputs"] == len(IMAGES) + 1
        rels = [item[1] for item in manifest["items"]]
        images = json.loads((out / f"images.shard-{k}-of-{N}.json").read_text())
        done = {i["file_name"] for i in images}
        assert done == {r for r in rels if r != "empty.jpg"}
        overlays = {p.relative_to(out / "overlays").with_suffix(".jpg").as_posix()
                    for p in (out / "overlays").rglob("*.jpg")}  # fmt: skip
        assert overlays == done
        seen += rels
    assert sorted(seen) == sorted([p.name for p in IMAGES] + ["empty.jpg"])
    assert all(len(json.loads(
        (out / ".mrcnn" / "shards" / f"shard-{k}-of-{N}.json").read_text())["items"]) < len(seen)
        for k, out in enumerate(shards))  # fmt: skip


def merge(*folders, out: Path, extra=()):
    return invoke_cli(["merge", *folders, "--out", out, "--json", *extra])


@needs_coco
def test_merged_shards_equal_one_unsharded_run(shards, unsharded, bad_file, tmp_path):
    result = merge(*shards, out=tmp_path / "merged")
    assert result.exit_code == 1, result.output  # the bad file failed (in every shard)
    summary = json.loads(result.stdout)
    assert summary["images"] == len(IMAGES) and summary["shards"] == N
    assert summary["failures"] == [{"path": str(bad_file), "reason": "empty file (0 bytes)"}]
    merged, whole = output_files(tmp_path / "merged"), output_files(unsharded)
    assert sorted(merged) == sorted(whole)
    assert "objects.csv" in whole and "cvat.xml" in whole
    for name in whole:  # predictions.json, images.json, failures.jsonl, csv, cvat, masks, overlays
        assert merged[name] == whole[name], name
    assert summary["files_linked"] + summary["files_copied"] == 2 * len(IMAGES) + N


def test_a_merged_folder_resumes_like_an_unsharded_run(shards, tiny_checkpoint, inputs, tmp_path):
    out = tmp_path / "merged"
    merge(*shards, out=out)
    result = invoke_cli(segment_args(tiny_checkpoint, out, *inputs))
    summary = json_summary(result)
    assert (summary["processed"], summary["skipped"]) == (0, len(IMAGES))


def test_a_missing_shard_is_reported(shards, tmp_path):
    result = merge(shards[0], shards[2], out=tmp_path / "merged")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"shard 1/{N} missing" in lines[0]
    assert not (tmp_path / "merged" / "predictions.json").exists()


def test_a_shard_made_with_other_settings_is_refused(shards, tiny_checkpoint, inputs, tmp_path):
    other = tmp_path / "other"
    extra = ["--shard", f"1/{N}", "--max-det", "3"]
    invoke_cli(segment_args(tiny_checkpoint, other, *inputs, extra=extra))
    result = merge(shards[0], other, shards[2], out=tmp_path / "merged")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "other settings" in lines[0] and str(other) in lines[0]


def test_the_same_shard_twice_is_refused(shards, tmp_path):
    copy = Path(shutil.copytree(shards[1], tmp_path / "copy"))
    result = merge(*shards, copy, out=tmp_path / "merged")
    assert result.exit_code == 2 and "two folders" in result.stderr


@needs_coco
def test_a_shard_with_images_not_done_is_reported(shards, tmp_path):
    unfinished = Path(shutil.copytree(shards[2], tmp_path / "s2"))
    manifest = json.loads(next((unfinished / ".mrcnn" / "shards").iterdir()).read_text())
    first = next(item[1] for item in manifest["items"] if item[1] != "empty.jpg")
    Journal(unfinished).forget(first)
    result = merge(shards[0], shards[1], unfinished, out=tmp_path / "merged")
    assert result.exit_code == 1
    assert "not finished" in result.stderr and first in result.stderr


def test_a_folder_without_shards_is_refused(unsharded, tmp_path):
    result = merge(unsharded, out=tmp_path / "merged")
    assert result.exit_code == 2 and "no shard output" in result.stderr


def test_shards_sharing_one_folder_merge_in_place(tiny_checkpoint, unsharded, inputs, tmp_path):
    out = tmp_path / "shared"
    for k in range(N):
        invoke_cli(segment_args(tiny_checkpoint, out, *inputs, extra=["--shard", f"{k}/{N}"]))
    result = merge(out, out=out)
    assert result.exit_code == 1, result.output
    merged = {k: v for k, v in output_files(out).items() if ".shard-" not in k}
    assert merged == output_files(unsharded)
