"""Inputs in object storage: a prefix lists its images, outputs are named by key, a
changed object is redone, and a missing bucket, missing key or network error is one
line for that input. Against a real S3 server (moto's server mode on 127.0.0.1, started
and stopped by this module); credentials and endpoint reach s3fs only through the
environment, as they would on a cluster.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

import cv2
import pytest
from helpers import (
    free_port,
    invoke_cli,
    json_summary,
    moto_server,
    output_files,
    s3_env,
    tiny_shapes_image,
)

pytest.importorskip("s3fs", reason='needs s3fs (pip install -e ".[cloud]")')
pytestmark = pytest.mark.timeout(300)  # a hung server or backend fails, never hangs CI

BUCKET = "photos"
IMAGES = {"a.png": 0, "sub/b.png": 1, "sub/c.jpg": 2}  # key below the prefix -> seed
SAVE = "overlay,masks,coco,labelme"


def encoded(name: str, seed: int) -> bytes:
    ok, data = cv2.imencode(Path(name).suffix, tiny_shapes_image(seed))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, the environment pointing at it, a bucket with images under `set/`
    (and files that are not inputs), and the same images in a local folder."""
    home = tmp_path_factory.mktemp("aws")
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(endpoint, home).items():
            mp.setenv(key, value)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        local = tmp_path_factory.mktemp("local") / "set"
        for key, seed in IMAGES.items():
            data = encoded(key, seed)
            fs.pipe(f"{BUCKET}/set/{key}", data)
            (local / key).parent.mkdir(parents=True, exist_ok=True)
            (local / key).write_bytes(data)
        fs.pipe(f"{BUCKET}/set/notes.txt", b"not an image")
        fs.pipe(f"{BUCKET}/set/.hidden/d.png", encoded("d.png", 3))
        yield fs, local


def segment_args(checkpoint: Path, out: Path, *inputs, extra=()) -> list:
    return ["segment", *inputs, "--model", checkpoint, "--device", "cpu", "--score-thr", "0",
            "--max-det", "5", "--save", SAVE, "--out", out, "--json", *extra]  # fmt: skip


def test_a_prefix_lists_its_images_named_by_their_keys(s3):
    from mrcnn_cli.sources import collect_sources

    items, failures = collect_sources([f"s3://{BUCKET}/set/"])
    assert not failures
    assert [str(it.rel) for it in items] == list(IMAGES)  # no .txt, nothing hidden
    assert [str(it.path) for it in items] == [f"s3://{BUCKET}/set/{k}" for k in IMAGES]


def test_a_prefix_without_its_slash_and_one_object_url_and_a_list_of_urls(s3, tmp_path):
    from mrcnn_cli.sources import collect_sources

    listed = tmp_path / "inputs.txt"
    listed.write_text(f"# from the bucket\ns3://{BUCKET}/set/sub/c.jpg\n")
    items, failures = collect_sources([f"s3://{BUCKET}/set/sub", f"s3://{BUCKET}/set/a.png"])
    assert not failures
    assert [str(it.rel) for it in items] == ["b.png", "c.jpg", "a.png"]
    items, failures = collect_sources([listed])
    assert not failures and [str(it.rel) for it in items] == ["c.jpg"]


def test_segment_from_a_bucket_writes_what_a_local_folder_run_writes(s3, tiny_checkpoint, tmp_path):
    _, local = s3
    from_s3 = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "s3", f"s3://{BUCKET}/set/"))
    assert from_s3.exit_code == 0, from_s3.output
    assert json_summary(from_s3)["processed"] == len(IMAGES)
    from_disk = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "disk", local))
    assert from_disk.exit_code == 0, from_disk.output
    files = output_files(tmp_path / "s3", skip=["labelme"])
    assert "overlays/sub/b.jpg" in files
    assert files == output_files(tmp_path / "disk", skip=["labelme"])
    labelme = json.loads((tmp_path / "s3" / "labelme" / "sub" / "b.json").read_text())
    assert labelme["imagePath"] == f"s3://{BUCKET}/set/sub/b.png"


def test_a_changed_object_is_redone_and_the_others_are_skipped(s3, tiny_checkpoint, tmp_path):
    fs, _ = s3
    out = tmp_path / "out"
    url = f"s3://{BUCKET}/set/"
    assert invoke_cli(segment_args(tiny_checkpoint, out, url)).exit_code == 0
    again = json_summary(invoke_cli(segment_args(tiny_checkpoint, out, url)))
    assert (again["processed"], again["skipped"]) == (0, len(IMAGES))
    before = (out / "overlays" / "a.jpg").read_bytes()
    try:
        fs.pipe(f"{BUCKET}/set/a.png", encoded("a.png", 99))  # a new ETag
        changed = json_summary(invoke_cli(segment_args(tiny_checkpoint, out, url)))
        assert (changed["processed"], changed["skipped"]) == (1, len(IMAGES) - 1)
        assert (out / "overlays" / "a.jpg").read_bytes() != before
    finally:
        fs.pipe(f"{BUCKET}/set/a.png", encoded("a.png", IMAGES["a.png"]))


def test_missing_bucket_missing_key_and_network_error_are_one_line_each(
    s3, tiny_checkpoint, tmp_path
):
    dead = f"http://127.0.0.1:{free_port()}/x.jpg"  # nothing listens there
    inputs = ["s3://no-such-bucket/set/", f"s3://{BUCKET}/set/gone.jpg", dead,
              f"s3://{BUCKET}/set/a.png"]  # fmt: skip
    result = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "out", *inputs))
    assert result.exit_code == 1, result.output
    summary = json_summary(result)
    assert summary["processed"] == 1
    reasons = {f["path"]: f["reason"] for f in summary["failures"]}
    assert list(reasons) == inputs[:3]
    assert reasons[inputs[0]] == reasons[inputs[1]] == "no such bucket, prefix or object"
    assert reasons[dead].startswith("cannot reach the object store")
    assert all("\n" not in r for r in reasons.values())


def test_a_denied_read_is_one_line(s3, monkeypatch, tmp_path):
    """A second server that checks credentials (moto's IAM knows no key): after the
    bucket and the object are made, every request is refused."""
    import s3fs

    from mrcnn_cli.sources import collect_sources

    with moto_server(auth_after=8) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches the client, endpoint and all
        try:
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("locked")
            fs.pipe("locked/x.png", encoded("x.png", 0))
            for _ in range(8):  # spend what is left of the unchecked requests
                try:
                    fs.ls("locked", refresh=True)
                except PermissionError:
                    break
            else:
                pytest.fail("the server never started checking credentials")
            items, failures = collect_sources(["s3://locked/x.png", "s3://locked/"])
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert items == []
    assert [f.path for f in failures] == ["s3://locked/x.png", "s3://locked/"]
    assert all(f.reason.startswith("access denied (") for f in failures), failures
    assert all("\n" not in f.reason for f in failures)


def test_shards_of_a_bucket_merge_into_the_unsharded_run(s3, tiny_checkpoint, tmp_path):
    url = f"s3://{BUCKET}/set/"
    whole = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "whole", url))
    assert whole.exit_code == 0, whole.output
    shards = tmp_path / "shards"
    for k in range(2):
        result = invoke_cli(segment_args(tiny_checkpoint, shards, url, extra=["--shard", f"{k}/2"]))
        assert result.exit_code == 0, result.output
    manifest = json.loads((shards / ".mrcnn" / "shards" / "shard-0-of-2.json").read_text())
    assert all(item[4].startswith("s3://") for item in manifest["items"])
    merged = invoke_cli(["merge", shards, "--out", tmp_path / "merged"])
    assert merged.exit_code == 0, merged.output
    assert output_files(tmp_path / "merged") == output_files(tmp_path / "whole")


@pytest.mark.slow
def test_ray_workers_read_the_objects_themselves(s3, tiny_checkpoint, tmp_path):
    """Ray workers get URLs (not bytes) and inherit the credential chain's environment."""
    ray = pytest.importorskip("ray")
    import torch

    url = f"s3://{BUCKET}/set/"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a 1-CPU Ray worker: the same rounding
    try:
        local = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "local", url))
    finally:
        torch.set_num_threads(before)
    assert local.exit_code == 0, local.output
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)  # fmt: skip
    try:
        extra = ["--engine", "ray", "--num-workers", "2"]
        result = invoke_cli(segment_args(tiny_checkpoint, tmp_path / "ray", url, extra=extra))
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert output_files(tmp_path / "ray") == output_files(tmp_path / "local")
    from mrcnn_cli.journal import Journal

    record = Journal(tmp_path / "ray").load(PurePosixPath("sub/b.png"))
    assert record is not None and record.source == f"s3://{BUCKET}/set/sub/b.png"
