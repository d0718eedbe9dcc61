"""The retry rules of the Ray driver when workers die (no Ray needed): a batch is retried
on another worker, split image by image after failing on two, and a poison image ends
as one failure record."""

from __future__ import annotations

from mrcnn_cli.distributed.retries import RetryBook


def row(*rels: str, todo: tuple[bool, ...] | None = None) -> dict:
    todo = todo or (True,) * len(rels)
    return {"paths": [f"/in/{r}" for r in rels], "shown": [f"/in/{r}" for r in rels],
            "rels": list(rels), "ids": list(range(len(rels))), "todo": list(todo),
            "listed": [""] * len(rels)}  # fmt: skip


def test_a_batch_whose_worker_died_runs_again_first():
    book = RetryBook([row("a.jpg", "b.jpg"), row("c.jpg", "d.jpg")])
    first = book.take()
    assert book.charge(first, worker=1, reason="node lost") == []
    again = book.take()
    assert again is first and again.is_retry and again.row["rels"] == ["a.jpg", "b.jpg"]


def test_a_batch_only_queued_behind_a_dying_one_goes_back_uncharged():
    book = RetryBook([row("a.jpg"), row("b.jpg")])
    running, queued = book.take(), book.take()
    book.charge(running, worker=1, reason="killed")
    book.put_back(queued)
    assert book.take() is queued and queued.tries == 0 and not queued.is_retry
    assert book.take() is running


def test_a_batch_that_failed_on_two_workers_is_split_into_its_images_to_do():
    book = RetryBook([row("a.jpg", "b.jpg", "c.jpg", todo=(True, False, True))])
    task = book.take()
    book.charge(task, worker=1, reason="killed")
    assert book.take() is task
    assert book.charge(task, worker=2, reason="killed") == []
    singles = [book.take() for _ in range(len(book))]
    assert [t.row["rels"] for t in singles] == [["a.jpg"], ["c.jpg"]]  # b was done already
    assert all(t.row["todo"] == [True] and t.is_retry for t in singles)
    assert [t.row["paths"] for t in singles] == [["/in/a.jpg"], ["/in/c.jpg"]]


def test_a_poison_image_ends_as_one_failure_after_two_workers():
    book = RetryBook([row("poison.jpg")])
    task = book.take()
    assert book.charge(task, worker=1, reason="out of memory") == []
    assert book.take() is task
    given_up = book.charge(task, worker=2, reason="out of memory")
    assert len(given_up) == 1 and given_up[0][0] == "poison.jpg"
    assert "2 workers" in given_up[0][1] and "out of memory" in given_up[0][1]
    assert len(book) == 0


def test_retries_on_one_worker_are_bounded_too():
    book = RetryBook([row("x.jpg")], max_tries=3)
    task = book.take()
    for _ in range(2):
        assert book.charge(task, worker=7, reason="crashed") == []
        assert book.take() is task
    assert [rel for rel, _ in book.charge(task, worker=7, reason="crashed")] == ["x.jpg"]
    assert len(book) == 0
