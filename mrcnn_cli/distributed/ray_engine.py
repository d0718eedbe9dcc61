"""`mrcnn segment --engine ray`: the same job spread over a pool of Ray actors.

    driver:  collect inputs, resume check, cut model batches (as the local engine does):
             one row per model batch (paths or URLs, rels, ids, to-do flags)
    tasks:   decode the batch's images (with GPU workers; CPU workers decode inline,
             see `RayOptions`)
    actors:  SegmentWorker, a fixed pool (one per GPU, or N CPU workers), each builds
             one Segmenter, runs the batch, writes overlays/masks with the engine's
             ImageWriter and appends to its own journal segment; one batch in
             flight per worker (with decode tasks, the next one's already decoding)
    driver:  per image only rel, status, detection count, reason come back: the Tally
             (progress bar, summary) advances as they arrive; at the end the journal
             is re-read and predictions.json/images.json streamed from it

Workers that die (a node lost, a process killed, out of memory) are replaced and their
batches retried by the driver's own bookkeeping (`_Pool`, `retries.RetryBook`): bounded
retries, a batch split image by image once it has failed on two workers, a poison image
ending as one failure record.

Masks never travel back to the driver (a variable number of masks per image): they go
to files on the worker, and results carry small values only. Pixels, where they travel
at all, go as bytes with their shape. Each row is one model batch cut from the whole
input list, exactly as the local engine cuts them, so an image's batch-mates (and so
its numbers) are the same as locally at any batch size, and a resumed or retried run
writes what an uninterrupted one writes.

Ray is imported only inside functions here: the base install has no Ray, and
`--engine ray` without it is a one-line usage error.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mrcnn_cli.atomic import remove_stale_temp_files
from mrcnn_cli.config import SegmentConfig
from mrcnn_cli.decode import decode_image_safe
from mrcnn_cli.distributed.retries import RetryBook, Task
from mrcnn_cli.engine import (
    Decoded,
    ImageWriter,
    batch_groups,
    images_to_do,
    model_version,
    output_settings,
    write_segment_report,
)
from mrcnn_cli.errors import FailedItem, MrcnnError
from mrcnn_cli.journal import STATE_DIR, Journal, close_with_failures, settings_hash
from mrcnn_cli.models.loading import is_model_path, meta_and_state
from mrcnn_cli.progress import ProgressListener, RunSummary, Tally
from mrcnn_cli.remote import as_source_path
from mrcnn_cli.runs import locked_inputs
from mrcnn_cli.segmenter import ImageError, Segmenter
from mrcnn_cli.sources import SourceItem, image_ids_from_annotations, source_stamp
from mrcnn_cli.writers.coco import assign_image_ids
from mrcnn_cli.writers.run_files import NAMED_CLASS_KINDS, write_run_files

INSTALL_HINT = 'pip install "mrcnn[ray]" (in a checkout: pip install -e ".[ray]")'
GPU_BATCH_SIZE = 4  # as models/loading.py's default on CUDA
CPU_BATCH_SIZE = 1
MAX_WORKER_DEATHS = 8  # more deaths than this plus 2 per worker: no more replacements
START_TIMEOUT_S = 900.0  # a worker that cannot start (no room in the cluster) is given up
WAIT_S = 1.0
PROBE_TIMEOUT_S = 300.0
DONE, FAILED, FATAL = "done", "failed", "fatal"
LOST = (
    "the Ray run ended without a result for it (a bug in mrcnn: please report it); rerun to resume"
)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: None picks from the cluster (see `resolve`)."""

    address: str | None = None  # None: start a local Ray; else join this cluster
    num_workers: int | None = None  # default: one per GPU, else 1
    gpus_per_worker: float | None = None  # default: 1 if the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    decode_in_tasks: bool | None = None  # default: with GPU workers (CPU ones decode inline)

    def validate(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise MrcnnError("--num-workers must be at least 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise MrcnnError("--gpus-per-worker must be 0 or more")
        if self.cpus_per_worker <= 0:
            raise MrcnnError("--cpus-per-worker must be more than 0")


@dataclass(frozen=True)
class _Plan:
    workers: int
    gpus: float
    cpus: float
    decode_in_tasks: bool
    batch_size: int


def import_ray() -> Any:
    """The `ray` module, or a one-line usage error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise MrcnnError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


# --- the driver ----------------------------------------------------------------------
def run_segment_ray(
    cfg: SegmentConfig,
    options: RayOptions | None = None,
    progress: ProgressListener | None = None,
) -> RunSummary:
    """`run_segment` on Ray: same outputs, resume, failures and summary (images only)."""
    options = options or RayOptions()
    cfg.validate()
    options.validate()
    ray = import_ray()
    with locked_inputs(cfg.inputs, frozenset({"image"}), cfg.out) as (items, failures):
        started = _connect(ray, options)
        try:
            plan = _plan(ray, cfg, options, started)
            check_out_from_workers(ray, cfg.out.resolve())
            return _drive(ray, cfg, plan, items, failures, progress)
        finally:
            if started:
                _no_auto_init(ray)
                ray.shutdown()


def _no_auto_init(ray: Any) -> None:
    """After a Ctrl-C, a Ray call made by anything still running in this process would
    start a fresh local Ray (auto-init) that nobody shuts down. We started this Ray and
    end it: no auto-init from here on in this process."""
    hook = getattr(getattr(ray, "_private", None), "auto_init_hook", None)
    if hook is not None and hasattr(hook, "enable_auto_connect"):
        hook.enable_auto_connect = False


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join the cluster, or start a quiet local Ray; True if this call started one."""
    if ray.is_initialized():  # the caller's own Ray (a notebook, the tests)
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if options.address:
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MrcnnError(f"cannot join the Ray cluster at {options.address}: {first}") from exc
        return True
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = options.num_workers or 1
    # Decode tasks need a CPU beside the workers' (logical CPUs: oversubscribing is safe).
    needed = workers * options.cpus_per_worker + 1
    ray.init(address="local", num_cpus=max(cpus or 1, math.ceil(needed)), **quiet)
    return True


def _plan(ray: Any, cfg: SegmentConfig, options: RayOptions, local: bool) -> _Plan:
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0))
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    workers = options.num_workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
    device = cfg.model.device
    if gpus == 0 and device.startswith("cuda"):
        raise MrcnnError("--device cuda with --engine ray needs --gpus-per-worker 1 (or more)")
    if gpus > 0 and device not in ("auto", "cuda"):
        raise MrcnnError("with --engine ray, Ray assigns each worker its GPUs: use --device auto")
    if local:  # a cluster may grow (autoscaling); a local Ray cannot
        if workers * gpus > cluster_gpus:
            raise MrcnnError(
                f"{workers} worker(s) x {gpus:g} GPU need {workers * gpus:g} GPU(s); "
                f"this machine has {cluster_gpus:g}"
            )
    decode_in_tasks = options.decode_in_tasks
    if decode_in_tasks is None:
        decode_in_tasks = gpus > 0
    batch_size = cfg.batch_size or (GPU_BATCH_SIZE if gpus > 0 else CPU_BATCH_SIZE)
    return _Plan(workers, gpus, options.cpus_per_worker, decode_in_tasks, batch_size)


def _worker_config(cfg: SegmentConfig, plan: _Plan) -> SegmentConfig:
    """`cfg` with every path absolute (workers run elsewhere) and the device pinned."""
    model = cfg.model
    if is_model_path(model.model) and Path(model.model).exists():  # not `demo` or an arch
        model = replace(model, model=str(Path(model.model).resolve()))
    if model.weights:
        model = replace(model, weights=str(Path(model.weights).resolve()))
    device = model.device if model.device != "auto" else ("cuda" if plan.gpus > 0 else "cpu")
    model = replace(model, device=device)
    ann = cfg.ann.resolve() if cfg.ann else None
    return replace(cfg, out=cfg.out.resolve(), model=model, ann=ann)


def _drive(
    ray: Any,
    cfg: SegmentConfig,
    plan: _Plan,
    items: list[SourceItem],
    failures: list[FailedItem],
    progress: ProgressListener | None,
) -> RunSummary:
    journal = Journal(cfg.out)
    if cfg.overwrite:
        journal.clear()
    digest = settings_hash(output_settings(cfg, plan.batch_size))
    known = image_ids_from_annotations(cfg.ann) if cfg.ann else None
    image_ids = assign_image_ids([it.rel for it in items], known)

    with Tally(len(items) + len(failures), listener=progress) as tally:
        todo = images_to_do(cfg, journal, items, failures, digest, tally)
        groups = batch_groups(items, todo, plan.batch_size)
        segments: set[str] = set()  # the workers' journal files, named by the workers
        given_up: list[str] = []
        if groups:
            by_rel = {str(it.rel): it for it in todo}
            rows = _rows(groups, by_rel, image_ids)
            worker_cfg = _worker_config(cfg, plan)
            deaths: list[int] = []
            results = _execute(ray, rows, worker_cfg, digest, plan, deaths)
            heard: set[str] = set()
            try:
                for rel, status, detections, reason, segment in results:
                    segments.add(segment)
                    if status == FATAL:
                        raise MrcnnError(reason)
                    if rel in heard:  # counted once, whatever the pool says twice
                        continue
                    heard.add(rel)
                    if status == DONE:
                        tally.advance(detections=detections)
                    else:
                        if not segment:  # given up by the driver, not failed by a worker
                            given_up.append(rel)
                        tally.fail(FailedItem(by_rel[rel].path, reason))
            finally:
                results.close()  # stop the workers now (Ctrl-C, an error), before ray.shutdown
            for rel in (r for r in by_rel if r not in heard):  # the summary always adds up
                given_up.append(rel)
                tally.fail(FailedItem(by_rel[rel].path, LOST))
            if deaths and deaths[0]:  # a worker killed mid-write leaves a temp file
                remove_stale_temp_files(cfg.out)  # we hold the lock; our workers are gone
        journal.refresh(segments)  # what the workers appended
        for rel in given_up:  # a worker that died on it may have recorded it first
            journal.forget(rel)
        named = NAMED_CLASS_KINDS | {"report"}
        names, ids = _class_tables(cfg) if named & set(cfg.save) else ((), ())
        rels = [it.rel for it in items]
        for failed in write_run_files(cfg.out, cfg.save, journal, rels, digest, image_ids,
                                      names, ids, export=cfg.export,
                                      model_version=model_version(cfg)):  # fmt: skip
            tally.fail(failed)
        if "report" in cfg.save:
            for failed in write_segment_report(cfg, plan.batch_size, tally.summary(), journal,
                                               rels, digest, names, ids):  # fmt: skip
                tally.fail(failed)
        return close_with_failures(tally, cfg.out)


def _class_tables(cfg: SegmentConfig) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The model's class names and category ids, read by the driver (which runs no model)
    for the tables and label lists the run-level files carry."""
    meta, _, _ = meta_and_state(cfg.model.model, cfg.model.weights, cfg.model.random_init_seed)
    return meta.class_names, meta.category_ids


def _rows(
    groups: list[list[SourceItem]], todo: dict[str, SourceItem], image_ids: dict[str, int]
) -> list[dict[str, Any]]:
    """One row per model batch: small values only (paths or URLs, never bytes)."""
    return [
        {
            "paths": [str(it.path.resolve()) for it in group],
            "shown": [str(it.path) for it in group],
            "listed": [getattr(it.path, "stamp", None) or "" for it in group],  # URLs' ETags
            "rels": [str(it.rel) for it in group],
            "ids": [image_ids[str(it.rel)] for it in group],
            "todo": [str(it.rel) in todo for it in group],
        }
        for group in groups
    ]


def _execute(
    ray: Any,
    rows: list[dict[str, Any]],
    cfg: SegmentConfig,
    digest: str,
    plan: _Plan,
    deaths: list[int],
) -> Iterator[tuple[str, str, int, str, str]]:
    """Run the batches on a pool of workers that survives losing some; yield (rel,
    status, detections, reason, journal segment) per to-do image, as they finish.
    `deaths` receives the number of workers that died."""
    pool = _Pool(ray, cfg, digest, plan)
    try:
        yield from pool.run(RetryBook(rows))
    finally:
        pool.close()
        deaths.append(pool.deaths)


@dataclass
class _Slot:
    """One worker of the pool: an actor, known ready once its `ready` call returned.

    It holds at most one `run` call (`running`): when a worker dies, the batch it was
    running is the one to charge. With two calls queued on an actor, a death cannot be
    pinned on either: a worker that finished the first batch and died on the second
    often takes the first one's reply with it, and the innocent batch was charged while
    the poison one went back uncharged (seen under load: healthy images given up, poison
    retried without end). With decode tasks, the next batch's pixels are decoded while
    this one runs (`prefetched`), so a GPU does not wait on the decode either way."""

    actor: Any
    worker: int  # unique per actor ever started: "two different workers" means two of these
    ready_ref: Any
    started: float
    ready: bool = False
    running: tuple[Any, Task] | None = None  # the run call's ref and its batch
    prefetched: tuple[Any, Task] | None = None  # decode task's ref and the next batch

    @property
    def busy(self) -> bool:
        return self.running is not None or self.prefetched is not None


class _Pool:
    """A fixed number of SegmentWorker actors, replaced when they die (a lost node, a
    killed process, out of memory), with the batches they held retried (`RetryBook`).

    Why not Ray Data's actor pool with `max_restarts`/`max_task_retries`: its retries are
    per call, so a poison image is retried until the budget runs out with its whole batch,
    and a restarted actor that has no room left after a node is lost waits forever (Ray
    issues #26991, #62746). Here an actor is never restarted in place (`max_restarts=0`):
    a new one is started wherever the cluster has room, and the driver decides what its
    batches do next.
    """

    def __init__(self, ray: Any, cfg: SegmentConfig, digest: str, plan: _Plan) -> None:
        self.ray, self.cfg, self.plan = ray, cfg, plan
        options = {"num_cpus": plan.cpus, "num_gpus": plan.gpus, "max_restarts": 0,
                   "max_task_retries": 0}  # fmt: skip
        self.remote = ray.remote(SegmentWorker).options(**options)
        self.args = (cfg, digest, plan.batch_size)
        self.decode = ray.remote(num_cpus=1)(decode_row) if plan.decode_in_tasks else None
        self.slots: list[_Slot] = []
        self.started = 0
        self.deaths = 0
        self.max_deaths = MAX_WORKER_DEATHS + 2 * plan.workers
        for _ in range(plan.workers):
            self._start()

    def _start(self) -> None:
        actor = self.remote.remote(*self.args)
        self.started += 1
        self.slots.append(_Slot(actor, self.started, actor.ready.remote(), time.monotonic()))

    def run(self, book: RetryBook) -> Iterator[tuple[str, str, int, str, str]]:
        ray = self.ray
        while len(book) or any(slot.busy for slot in self.slots):
            self._submit(book)
            if not self.slots:  # every worker died and no more may start
                yield from self._give_up(book)
                return
            owners = {}
            for slot in self.slots:
                if not slot.ready:
                    owners[slot.ready_ref] = slot
                elif slot.running is not None:
                    owners[slot.running[0]] = slot
            done, _ = ray.wait(list(owners), num_returns=1, timeout=WAIT_S)
            for ref in done:
                slot = owners[ref]
                if slot not in self.slots:
                    continue  # its worker was found dead while handling another result
                if not slot.ready:
                    self._on_ready(slot)
                else:
                    yield from self._on_result(slot, book)
            self._check_starting()

    def _take(self, book: RetryBook) -> tuple[Any, Task] | None:
        """The next batch and what a worker's `run` gets for it: the row, or the ref of
        the task decoding it; None when the queue is empty."""
        task = book.take()
        if task is None:
            return None
        row = {**task.row, "retry": task.is_retry}
        return (self.decode.remote(row, self.cfg.max_pixels) if self.decode else row), task

    def _submit(self, book: RetryBook) -> None:
        for slot in self.slots:
            if not slot.ready:
                continue
            if slot.running is None:
                job, slot.prefetched = slot.prefetched or self._take(book), None
                if job is None:
                    continue
                arg, task = job
                slot.running = (slot.actor.run.remote(arg), task)
            if self.decode and slot.prefetched is None:
                slot.prefetched = self._take(book)

    def _on_ready(self, slot: _Slot) -> None:
        try:
            fatal = self.ray.get(slot.ready_ref)
        except self.ray.exceptions.RayError:  # died while starting: no batches
            self._drop(slot, replace=True)
            return
        if fatal is not None:  # the model cannot load: every worker would say the same
            raise MrcnnError(fatal)
        slot.ready = True

    def _on_result(self, slot: _Slot, book: RetryBook) -> Iterator[tuple[str, str, int, str, str]]:
        ray = self.ray
        assert slot.running is not None
        ref, task = slot.running
        try:
            results, segment = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the worker is gone
            yield from self._died(slot, exc, book)
            return
        except ray.exceptions.RayError as exc:  # the call failed, the worker lives on
            slot.running = None
            yield from _given_up(book.charge(task, slot.worker, _first_line(exc)))
            return
        slot.running = None
        for rel, status, detections, reason in results:
            yield rel, status, detections, reason, segment

    def _died(
        self, slot: _Slot, exc: BaseException, book: RetryBook
    ) -> Iterator[tuple[str, str, int, str, str]]:
        """Drop a dead worker: the batch it was running is charged to it, the one
        decoded for it next goes back uncharged; start another."""
        if slot.prefetched is not None:
            book.put_back(slot.prefetched[1])
        if slot.running is not None:
            task = slot.running[1]
            yield from _given_up(book.charge(task, slot.worker, _first_line(exc)))
        slot.running = slot.prefetched = None
        self._drop(slot, replace=True)

    def _drop(self, slot: _Slot, replace: bool) -> None:
        """Forget a worker (killed, in case it is only unreachable) and, while the budget
        of deaths lasts, start another in its place."""
        self.slots.remove(slot)
        self.deaths += 1
        _kill(self.ray, slot.actor)
        if replace and self.deaths <= self.max_deaths:
            self._start()

    def _check_starting(self) -> None:
        """A worker that has not started in `START_TIMEOUT_S` (the cluster has no room
        left for it after losing nodes) is given up, as a dead one."""
        now = time.monotonic()
        for slot in list(self.slots):
            if not slot.ready and now - slot.started > START_TIMEOUT_S:
                # another would not fit either, unless no worker is left to wait for
                self._drop(slot, replace=not any(s.ready for s in self.slots if s is not slot))

    def _give_up(self, book: RetryBook) -> Iterator[tuple[str, str, int, str, str]]:
        why = (f"no Ray worker left to run it ({self.deaths} died or could not start; "
               "rerun to resume)")  # fmt: skip
        while (task := book.take()) is not None:
            for rel in task.todo_rels:
                yield rel, FAILED, 0, why, ""

    def close(self) -> None:
        for slot in self.slots:
            _kill(self.ray, slot.actor)
        self.slots = []


def _given_up(images: list[tuple[str, str]]) -> Iterator[tuple[str, str, int, str, str]]:
    for rel, reason in images:
        yield rel, FAILED, 0, reason, ""


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip() and not line.strip().startswith("^"):
            return line.strip()[:300]
    return type(exc).__name__


# --- the output folder, seen from the workers ------------------------------------------
def _probe(out: str, name: str) -> str | None:
    """On a worker node: write a file in `out`; None if that worked, else why not."""
    try:
        path = Path(out) / STATE_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_out_from_workers(ray: Any, out: Path) -> None:
    """Every node that runs workers must write to `out`, and the driver must see it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_probe)
    token = secrets.token_hex(6)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = []
    for node in nodes:
        name = f"probe-{token}-{node['NodeID'][:12]}"
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        pending.append(
            (node, name, probe.options(scheduling_strategy=strategy).remote(str(out), name))
        )
    shared = "outputs must be on storage every worker sees (one shared filesystem, same path)"
    for node, name, ref in pending:
        where = node.get("NodeManagerAddress", node["NodeID"][:12])
        try:
            error = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise MrcnnError(f"the Ray node {where} did not run a probe task within "
                             f"{PROBE_TIMEOUT_S:g} s") from None  # fmt: skip
        except ray.exceptions.RayError:
            continue  # the node died since it was listed: it will run no worker either
        if error is not None:
            raise MrcnnError(
                f"--out {out} is not writable from the Ray node {where}: {error}; {shared}"
            )
        probe_file = out / STATE_DIR / name
        if not probe_file.exists():
            raise MrcnnError(
                f"--out {out} is not shared with the Ray node {where} (a file it wrote there "
                f"is not here); {shared}"
            )
        probe_file.unlink()


# --- the workers ---------------------------------------------------------------------
def decode_row(row: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """Decode a model batch's images: raw RGB bytes + [h, w], or the reason it failed."""
    pixels, shapes, errors, stamps = [], [], [], []
    listed = row.get("listed") or [""] * len(row["paths"])
    for path, stamp in zip(row["paths"], listed):
        stamps.append(stamp or source_stamp(path))  # before reading, as decode_item does
        result = decode_image_safe(path, max_pixels)
        if isinstance(result, FailedItem):
            pixels.append(b"")
            shapes.append([0, 0])
            errors.append(result.reason)
        else:
            pixels.append(np.ascontiguousarray(result).tobytes())
            shapes.append([int(result.shape[0]), int(result.shape[1])])
            errors.append("")
    return {**row, "pixels": pixels, "shapes": shapes, "errors": errors, "stamps": stamps}


class SegmentWorker:
    """One per Ray worker: a Segmenter built once, the engine's writers, its own journal."""

    def __init__(self, cfg: SegmentConfig, digest: str, batch_size: int) -> None:
        self.cfg, self.digest = cfg, digest
        self.fatal: str | None = None
        try:
            self.segmenter = Segmenter.from_config(cfg.model, batch_size)
        except MrcnnError as exc:  # a value, not a raise: a dying constructor tells nothing
            self.fatal = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure to build the model stops the run
            self.fatal = f"cannot load the model on a Ray worker: {type(exc).__name__}: {exc}"
        self.ids: dict[str, int] = {}
        self._new_journal()
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="write")

    def _new_journal(self) -> None:
        self.journal = Journal(self.cfg.out)
        self.writer = ImageWriter(self.cfg, self.journal, self.digest, self.ids)

    def ready(self) -> str | None:
        """None once the model is loaded, else why it cannot be (the run stops)."""
        return self.fatal

    def run(self, row: dict[str, Any]) -> tuple[list[tuple[str, str, int, str]], str]:
        """One model batch: per to-do image (rel, status, detections, reason), and the
        journal segment that holds their records."""
        if row.get("retry"):
            # A dead worker may have left records of this batch in its segment: a new
            # segment sorts after it, so these records are the ones the journal keeps.
            self.journal.flush()
            self._new_journal()
        results = self._group(row)
        self.journal.flush()  # durable and visible to the driver before it hears of it
        return results, self.journal.segment_name or ""

    def _group(self, row: dict[str, Any]) -> list[tuple[str, str, int, str]]:
        rels, todo = row["rels"], row["todo"]
        if self.fatal is not None:
            return [(rel, FATAL, 0, self.fatal) for rel, t in zip(rels, todo) if t]
        if "pixels" not in row:  # CPU workers decode here (no pixels through the store)
            row = decode_row(row, self.cfg.max_pixels)
        results: list[tuple[str, str, int, str]] = []

        def fail(rel: str, reason: str) -> None:
            self.journal.forget(rel)  # a file that fails now keeps no older results
            results.append((rel, FAILED, 0, reason))

        batch: list[tuple[int, Decoded]] = []
        for i, rel in enumerate(rels):
            if row["errors"][i]:
                if todo[i]:
                    fail(rel, row["errors"][i])
                continue
            h, w = row["shapes"][i]
            image = np.frombuffer(row["pixels"][i], np.uint8).reshape(h, w, 3)
            item = SourceItem(as_source_path(row["shown"][i]), PurePosixPath(rel), "image")
            batch.append((i, Decoded(item, image, row["stamps"][i])))
        predicted = self.segmenter.predict_batch([d.image for _, d in batch]) if batch else []
        writes: list[tuple[str, Future]] = []
        for (i, decoded), dets in zip(batch, predicted, strict=True):
            rel = rels[i]
            if not todo[i]:
                continue  # a batch-mate done earlier: run for the padding, not written
            if isinstance(dets, ImageError):
                fail(rel, dets.reason)
            else:
                self.ids[rel] = row["ids"][i]
                writes.append((rel, self.pool.submit(self.writer, decoded, dets)))
        for rel, future in writes:
            try:
                results.append((rel, DONE, int(future.result()), ""))
            except (OSError, ValueError) as exc:
                fail(rel, f"cannot write outputs: {exc}")
        self.ids.clear()
        return results
