"""The run report (`--save report`): its data, its escaping, its files, resume and failures.

What the page does with the data in a browser is tested in test_report_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote_to_bytes

import cv2
import numpy as np
import pytest

from mrcnn_cli.config import ModelConfig, SegmentConfig
from mrcnn_cli.journal import ImageRecord, Journal
from mrcnn_cli.progress import RunSummary
from mrcnn_cli.writers.report import (
    HIST_BINS,
    REPORT_FILE,
    ReportRun,
    image_table,
    render_report,
    report_document,
    url_stem,
    write_run_report,
)
from mrcnn_cli.writers.thumbs import THUMB_SIDE, thumb_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
DATA = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def record(rel: str, dets: list[tuple[int, float]], w: int = 64, h: int = 48) -> ImageRecord:
    results = [{"image_id": 1, "category_id": c, "score": s} for c, s in dets]
    return ImageRecord(rel, rel, 1, w, h, results, "x")


def page_data(html: str) -> dict:
    """The JSON the page was built with, read back as the browser reads it."""
    found = DATA.findall(html)
    assert len(found) == 1
    return json.loads(found[0])


def summary(**kw) -> RunSummary:
    return RunSummary(total=kw.get("total", 0), processed=kw.get("processed", 0), skipped=0,
                      failed=kw.get("failed", []))  # fmt: skip


# ----------------------------------------------------------------------------- data
def test_table_counts_detections_per_class_and_bins_scores():
    names, ids = ("__background__", "circle", "square"), (0, 1, 2)
    table = image_table(
        [record("a.png", [(1, 0.97), (2, 0.55)]), record("b.png", []), record("c.png", [(1, 1.0)])],
        names,
        ids,
    )
    data = table.to_json()
    assert data["classes"] == ["circle", "square"]
    assert data["class_counts"] == [2, 1]
    assert data["counts"] == [2, 0, 1]
    assert len(data["histogram"]) == HIST_BINS and sum(data["histogram"]) == 3
    assert data["histogram"][HIST_BINS - 1] == 2  # 0.97 and 1.0 (the top bin is closed)
    assert data["histogram"][int(0.55 * HIST_BINS)] == 1
    assert data["sizes"] == [64, 48] * 3


def test_each_images_detections_are_stored_best_first_in_thousandths():
    table = image_table(
        [record("a.png", [(1, 0.2), (2, 0.9), (1, 0.5)])], ("bg", "x", "y"), (0, 1, 2)
    )
    data = table.to_json()
    assert data["det_score"] == [900, 500, 200]
    assert [data["classes"][k] for k in data["det_class"]] == ["y", "x", "x"]


def test_unknown_category_is_shown_by_its_id():
    data = image_table([record("a.png", [(77, 0.8)])], ("bg", "x"), (0, 1)).to_json()
    assert data["classes"] == ["77"]


def test_data_is_compact_arrays_not_per_image_markup():
    records = [record(f"dir/img{i:05d}.jpg", [(1, 0.9), (1, 0.6)]) for i in range(2000)]
    table = image_table(records, ("bg", "x"), (0, 1))
    html = render_report(report_document(ReportRun("segment", Path("out")), summary(), table))
    assert "<img" not in html  # the page builds one page of cards at a time
    assert len(html) < 40_000 + 2000 * 40  # about 40 bytes per image with 2 detections


# ----------------------------------------------------------------------------- escaping
HOSTILE = "</script><script>alert(1)</script><b>bold</b>\nline2 & \u2028 <!--"


def test_hostile_names_cannot_end_the_data_element_and_read_back_exactly():
    table = image_table([record("x/" + HOSTILE.replace("\n", "_") + ".png", [])], ("bg",), (0,))
    failed = [type("F", (), {"display_path": HOSTILE, "display_reason": "<i>bad</i>"})()]
    doc = report_document(ReportRun("segment", Path("o")), summary(), table)
    doc["failures"] = [[f.display_path, f.display_reason] for f in failed]
    html = render_report(doc)
    template_scripts = render_report({"x": 1}).count("</script>")
    assert html.count("</script>") == template_scripts
    assert "<!--" not in DATA.findall(html)[0]
    back = page_data(html)
    assert back["failures"] == [[HOSTILE, "<i>bad</i>"]]
    assert back["images"]["names"][0].startswith("x/</script>")


def test_failure_names_with_newlines_are_shown_escaped_on_one_line(tmp_path):
    from mrcnn_cli.errors import FailedItem

    s = summary(failed=[FailedItem(tmp_path / "two\nlines<b>.png", "not <b>decodable</b>")])
    doc = report_document(ReportRun("segment", tmp_path), s, image_table([], (), ()))
    path, reason = doc["failures"][0]
    assert path.endswith("two\\nlines<b>.png") and "\n" not in path
    assert reason == "not <b>decodable</b>"


def test_names_that_are_not_utf8_get_their_url_from_the_bytes():
    rel = b"caf\xe9/\xff.png".decode("utf-8", "surrogateescape")
    data = image_table([record(rel, [])], ("bg",), (0,)).to_json()
    assert data["names"] == ["caf\\xe9/\\xff.png"]
    assert unquote_to_bytes(data["urls"]["0"]) == b"caf\xe9/\xff"


@pytest.mark.parametrize(
    "rel", ["a.png", "d/e/f.tar.gz", "noext", ".hidden", "end.", "sp ace#?.jpg"]
)
def test_url_stem_names_the_thumbnail_file(tmp_path, rel):
    thumb = thumb_path(tmp_path, rel).relative_to(tmp_path / "thumbs")
    assert unquote_to_bytes(url_stem(rel)).decode() + ".jpg" == thumb.as_posix()


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def demo():
    from mrcnn_cli.segmenter import Segmenter

    return Segmenter("demo", device="cpu")


def run(demo, inputs, out, save, **kw):
    from mrcnn_cli.engine import run_segment

    cfg = SegmentConfig(inputs=tuple(map(str, inputs)), out=out, model=ModelConfig("demo"),
                        save=tuple(save), **kw)  # fmt: skip
    return run_segment(cfg, segmenter=demo)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(EXAMPLES, folder)
    return folder


def test_report_shows_the_runs_counts_and_every_image_with_a_thumbnail(demo, images, tmp_path):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    s = run(demo, [images], out, ["overlay", "coco", "report"])
    data = page_data((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert data["run"]["processed"] == s.processed == 6
    assert data["run"]["failed"] == 1 and data["failures"][0][0].endswith("broken.png")
    assert data["run"]["detections"] == s.detections == sum(data["images"]["counts"])
    assert data["links"] == {"overlays": True, "thumbs": True}
    for name in data["images"]["names"]:
        thumb = cv2.imread(str(thumb_path(out, name)))
        assert thumb is not None and max(thumb.shape[:2]) <= THUMB_SIDE
    assert len(data["images"]["names"]) == 6


def test_thumbnail_is_the_overlay_scaled_down(demo, tmp_path):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    image = cv2.imread(str(EXAMPLES / "000001.png"))
    cv2.imwrite(str(big), cv2.resize(image, (640, 512), interpolation=cv2.INTER_NEAREST))
    out = tmp_path / "out"
    run(demo, [big], out, ["overlay", "report"])
    overlay = cv2.imread(str(out / "overlays" / "big.jpg"))
    thumb = cv2.imread(str(thumb_path(out, "big.png")))
    assert thumb.shape[:2] == (205, 256)
    expected = cv2.resize(overlay, (256, 205), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - expected.astype(int)).mean() < 4  # JPEG noise only


def test_resumed_run_rebuilds_the_report_with_every_image(demo, images, tmp_path):
    out = tmp_path / "out"
    run(demo, [images], out, ["coco", "report"])
    (out / REPORT_FILE).unlink()
    s = run(demo, [images], out, ["coco", "report"])
    assert (s.processed, s.skipped) == (0, 6)
    data = page_data((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert (data["run"]["skipped"], len(data["images"]["names"])) == (6, 6)


def test_adding_report_redoes_only_images_without_thumbnails(demo, images, tmp_path):
    out = tmp_path / "out"
    run(demo, [images], out, ["coco"])
    thumb_path(out, "000002.png").parent.mkdir(parents=True)
    s = run(demo, [images], out, ["coco", "report"])
    assert s.processed == 6  # no thumbnails yet: drawn again
    thumb_path(out, "000002.png").unlink()
    s = run(demo, [images], out, ["coco", "report"])
    assert (s.processed, s.skipped) == (1, 5)
    s = run(demo, [images], out, ["coco"])  # dropping the report redoes nothing
    assert (s.processed, s.skipped) == (0, 6)


def test_redo_without_report_removes_the_now_stale_thumbnail(demo, images, tmp_path):
    out = tmp_path / "out"
    run(demo, [images], out, ["coco", "report"])
    s = run(demo, [images], out, ["coco"], overwrite=True)
    assert s.processed == 6
    assert not any((out / "thumbs").rglob("*.jpg"))


def test_unwritable_report_is_one_failure_not_an_exception(demo, images, tmp_path):
    out = tmp_path / "out"
    (out / REPORT_FILE).mkdir(parents=True)  # a folder in the way: the rename fails
    (out / REPORT_FILE / "keep").write_text("x")
    s = run(demo, [images], out, ["coco", "report"])
    assert s.processed == 6
    assert [f.reason.startswith("cannot write") for f in s.failed] == [True]
    assert Path(s.failed[0].path).name == REPORT_FILE
    assert (out / "predictions.json").is_file()


def test_report_of_a_journal_skips_records_of_other_settings(tmp_path):
    journal = Journal(tmp_path)
    for i, digest in enumerate(["now", "old", "now"]):
        journal.record(f"i{i}.png", source=f"i{i}.png", image_id=i, width=8, height=8,
                       results=[], settings_hash=digest)  # fmt: skip
    path = tmp_path / REPORT_FILE
    rels = [PurePosixPath(f"i{i}.png") for i in range(3)]
    assert write_run_report(path, ReportRun("segment", tmp_path), summary(), journal, rels, "now",
                            (), ()) == []  # fmt: skip
    assert page_data(path.read_text())["images"]["names"] == ["i0.png", "i2.png"]


def test_merge_writes_one_report_of_all_shards(demo, images, tmp_path):
    from mrcnn_cli.distributed.merge import merge_shards
    from mrcnn_cli.engine import run_segment
    from mrcnn_cli.shards import ShardSpec

    (images / "broken.png").write_bytes(b"not a png")
    folders = []
    for k in range(2):
        folder = tmp_path / f"shard{k}"
        cfg = SegmentConfig(inputs=(str(images),), out=folder, model=ModelConfig("demo"),
                            save=("coco", "report"))  # fmt: skip
        run_segment(cfg, segmenter=demo, shard=ShardSpec(k, 2))
        assert (folder / f"report.shard-{k}-of-2.html").is_file()
        folders.append(folder)
    merged = merge_shards(folders, tmp_path / "all")
    data = page_data((tmp_path / "all" / REPORT_FILE).read_text(encoding="utf-8"))
    assert sorted(data["images"]["names"]) == sorted(p.name for p in EXAMPLES.glob("*.png"))
    assert data["run"]["detections"] == merged.detections
    assert [f[0].endswith("broken.png") for f in data["failures"]] == [True]
    assert not list((tmp_path / "all").glob("report.shard-*"))
    for name in data["images"]["names"]:
        assert thumb_path(tmp_path / "all", name).is_file()


def test_video_report_lists_each_video_with_its_frames_and_link(demo, tmp_path):
    from test_video import make_clip

    from mrcnn_cli.config import VideoConfig
    from mrcnn_cli.video import run_videos

    clip = make_clip(tmp_path / "clip <b>.mp4", frames=3)
    (tmp_path / "bad.mp4").write_bytes(b"no video")
    out = tmp_path / "out"
    cfg = VideoConfig(inputs=(str(clip), str(tmp_path / "bad.mp4")), out=out,
                      model=ModelConfig("demo"), save=("video", "report"))  # fmt: skip
    s = run_videos(cfg, segmenter=demo)
    data = page_data((out / REPORT_FILE).read_text(encoding="utf-8"))
    rows = {v["name"]: v for v in data["videos"]}
    assert rows["clip <b>.mp4"]["frames"] == s.processed == 3
    assert rows["clip <b>.mp4"]["href"] == "clip%20%3Cb%3E.mp4"
    assert rows["bad.mp4"]["status"].startswith("failed") and rows["bad.mp4"]["href"] is None
    assert data["run"]["unit"] == "frames" and data["run"]["failed"] == 1
    s = run_videos(cfg, segmenter=demo)  # resumed: the report says so
    rows = {v["name"]: v for v in page_data((out / REPORT_FILE).read_text())["videos"]}
    assert rows["clip <b>.mp4"]["status"] == "done before"


def test_eval_always_writes_a_report_with_its_numbers_and_pictures(demo, tmp_path):
    from mrcnn_cli.config import EvalConfig
    from mrcnn_cli.evaluation.run import run_eval

    out = tmp_path / "eval"
    cfg = EvalConfig(ann=EXAMPLES.parent / "instances.json", out=out, images=EXAMPLES,
                     model=ModelConfig("demo"), gallery=2)  # fmt: skip
    outcome = run_eval(cfg, segmenter=demo)
    data = page_data((out / REPORT_FILE).read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert data["eval"]["metrics"] == metrics["metrics"]
    assert data["run"]["command"] == "eval" and data["run"]["processed"] == 6
    linked = data["eval"]["files"]
    assert any(f.startswith("pr_") for f in linked) and any(f.startswith("worst/") for f in linked)
    assert all((out / f).is_file() for f in linked)
    assert outcome.exit_code == 0 and not outcome.unwritten


def test_scores_that_are_not_numbers_in_range_count_as_zero_or_one():
    results = [{"category_id": 1, "score": float("nan")}, {"category_id": 1, "score": 1.5},
               {"category_id": 1}]  # fmt: skip
    table = image_table([ImageRecord("a.png", "a.png", 1, 8, 8, results, "x")], ("bg", "x"), (0, 1))
    html = render_report(report_document(ReportRun("segment", Path("o")), summary(), table))
    assert page_data(html)["images"]["det_score"] == [1000, 0, 0]  # valid JSON: no NaN


def test_segment_report_lists_the_videos_it_met_beside_the_images(demo, images, tmp_path):
    from test_video import make_clip

    make_clip(images / "clip.mp4", frames=2)
    out = tmp_path / "out"
    s = run(demo, [images], out, ["overlay", "report"])
    assert s.processed == 7  # six images and the video
    data = page_data((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert len(data["images"]["names"]) == 6
    assert [(v["name"], v["status"], v["frames"], v["href"]) for v in data["videos"]] == [
        ("clip.mp4", "done", 2, "clip.mp4")
    ]


def test_data_json_cannot_hold_is_one_failure(tmp_path):
    from mrcnn_cli.writers.report import write_report

    failed = write_report(tmp_path / REPORT_FILE, {"eval": {"AP": float("nan")}})
    assert [f.reason.startswith("cannot build the report") for f in failed] == [True]
    assert not (tmp_path / REPORT_FILE).exists()


def test_overlays_are_the_same_bytes_with_and_without_the_report(demo, images, tmp_path):
    run(demo, [images], tmp_path / "a", ["overlay"])
    run(demo, [images], tmp_path / "b", ["overlay", "report"])
    for overlay in sorted((tmp_path / "a" / "overlays").glob("*.jpg")):
        assert overlay.read_bytes() == (tmp_path / "b" / "overlays" / overlay.name).read_bytes()
