"""The training loop: seeded, resumable to the step, evaluating with COCOeval as it goes.

Every batch is a pure function of (seed, step): which images and which flips. With the
model, optimizer, scheduler and torch RNG state saved in `last.pt`, a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN

from mrcnn_cli.atomic import atomic_path, write_json
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.evaluation.coco_io import quiet_coco
from mrcnn_cli.evaluation.metrics import evaluate_results
from mrcnn_cli.models.architectures import get_architecture
from mrcnn_cli.models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from mrcnn_cli.models.loading import LoadedModel, meta_and_state, pick_device
from mrcnn_cli.models.precision import autocast, check_precision, fp32_head_outputs
from mrcnn_cli.models.threaded_roi import thread_roi_pooling
from mrcnn_cli.segmenter import Segmenter
from mrcnn_cli.train.dataset import CocoInstanceDataset
from mrcnn_cli.train.readers import detect_format, read_labels

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
LOSS_SHORT = {
    "loss_classifier": "cls",
    "loss_box_reg": "box",
    "loss_mask": "mask",
    "loss_objectness": "obj",
    "loss_rpn_box_reg": "rpn_box",
}


@dataclass(frozen=True)
class TrainConfig:
    images: Path | None = None  # COCO: the images folder (with --data: for COCO/CVAT)
    ann: Path | None = None  # COCO instances JSON (or give `data`)
    out: Path = Path("run")
    val_images: Path | None = None
    val_ann: Path | None = None
    data: Path | None = None  # any format train/readers.py reads (format detected)
    val_data: Path | None = None
    classes: tuple[str, ...] | None = None  # the class list and its order, for `data`
    arch: str = "maskrcnn_resnet18_fpn_lite"
    init: str = "scratch"  # scratch | coco | path to an mrcnn checkpoint
    steps: int = 1000
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    clip_grad_norm: float = 10.0
    hflip: bool = True
    seed: int = 0
    eval_every: int = 500
    checkpoint_every: int = 100
    log_every: int = 10
    roi_op: str = "align"
    min_size: int | None = None
    max_size: int | None = None
    threads: int | None = None
    resume: bool = False
    device: str = "cpu"
    precision: str = "fp32"  # bf16: autocast on CPUs with avx512_bf16/AMX, or CUDA
    max_val_images: int | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    step: int = 0
    best_segm_ap: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- building
def build_for_training(
    cfg: TrainConfig, dataset: CocoInstanceDataset
) -> tuple[MaskRCNN, ModelMeta]:
    arch = get_architecture(cfg.arch)
    settings: dict[str, Any] = {}
    if cfg.min_size:
        settings["min_size"] = cfg.min_size
    if cfg.max_size:
        settings["max_size"] = cfg.max_size
    arch_options = {"roi_op": cfg.roi_op, **cfg.arch_options}
    meta = ModelMeta(cfg.arch, dataset.class_names, dataset.category_ids, settings, arch_options)
    torch.manual_seed(cfg.seed)
    model = arch.build(meta.num_classes, **arch_options, **{**arch.defaults, **settings})
    if cfg.init == "scratch":
        return model, meta
    state = _initial_state(cfg)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)  # predictors for new classes stay fresh
    return model, meta


def _initial_state(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    if cfg.init == "coco":
        _, state, _ = meta_and_state(cfg.arch)
        if state is None:
            raise MrcnnError(f"no COCO weights for {cfg.arch}")
        return state
    return load_checkpoint(cfg.init).state_dict


def training_datasets(
    cfg: TrainConfig,
) -> tuple[CocoInstanceDataset, CocoInstanceDataset | None]:
    """The training set and the validation set (None without one) the config names."""
    if (cfg.data is None) == (cfg.ann is None):
        raise MrcnnError("give the training data: --data PATH, or --images DIR with --ann FILE")
    if cfg.ann is not None and cfg.images is None:
        raise MrcnnError("--ann needs --images DIR (the folder its file names are under)")
    if cfg.classes and cfg.data is None:
        raise MrcnnError("--classes goes with --data (a COCO file lists its own categories)")
    if cfg.val_data is not None and cfg.val_ann is not None:
        raise MrcnnError("give --val-data or --val-images/--val-ann, not both")
    if (cfg.val_images is None) != (cfg.val_ann is None):
        raise MrcnnError("--val-images and --val-ann go together")
    if cfg.data is not None:
        train_set = CocoInstanceDataset.from_labels(read_labels(cfg.data, cfg.classes, cfg.images))
    else:
        train_set = CocoInstanceDataset(cfg.images, cfg.ann)
    val = None
    if cfg.val_data is not None:  # read with the training classes, in their order
        names = list(train_set.class_names[1:])
        split = "val" if detect_format(cfg.val_data) == "yolo" else "train"
        val = CocoInstanceDataset.from_labels(read_labels(cfg.val_data, names, split=split))
    elif cfg.val_ann is not None:
        val = CocoInstanceDataset(cfg.val_images, cfg.val_ann)
    return train_set, val


# ----------------------------------------------------------------------------- batches
def batch_plan(cfg: TrainConfig, n: int, step: int) -> tuple[list[int], list[bool]]:
    """Image indices and flips for `step`: epochs are seeded permutations of the data."""
    first = step * cfg.batch_size
    indices = []
    for k in range(first, first + cfg.batch_size):
        epoch, pos = divmod(k, n)
        perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, epoch])).permutation(n)
        indices.append(int(perm[pos]))
    flip_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, step]))
    flips = [bool(f) and cfg.hflip for f in flip_rng.random(cfg.batch_size) < 0.5]
    return indices, flips


def load_batch(
    dataset: CocoInstanceDataset, indices: list[int], flips: list[bool], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    for idx, flip in zip(indices, flips):
        image, target = dataset.load(idx)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        if flip:
            w = tensor.shape[-1]
            tensor = tensor.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
        images.append(tensor.to(device))
        targets.append({k: v.to(device) for k, v in target.items()})
    return images, targets


# ----------------------------------------------------------------------------- schedule
def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate at the last step."""
    if step < cfg.warmup_steps:
        return 0.001 + (1 - 0.001) * step / max(cfg.warmup_steps, 1)
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(
    model: MaskRCNN,
    meta: ModelMeta,
    dataset: CocoInstanceDataset,
    device: torch.device,
    max_images: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """bbox and segm AP of `model` on `dataset` with COCO evaluation defaults."""
    was_training = model.training
    model.eval()
    roi = model.roi_heads
    saved = (roi.score_thresh, roi.detections_per_img)
    roi.score_thresh, roi.detections_per_img = 0.05, 100
    segmenter = Segmenter.from_loaded(LoadedModel(model, meta, device))
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    results: list[dict[str, Any]] = []
    for start in range(0, count, batch_size):
        idxs = list(range(start, min(start + batch_size, count)))
        images = [dataset.load(i)[0] for i in idxs]
        for i, dets in zip(idxs, segmenter.predict(images, batch_size=len(images))):
            results.extend(dets.to_coco(int(dataset.images[i]["id"])))
    roi.score_thresh, roi.detections_per_img = saved
    model.train(was_training)
    gt = quiet_coco(dataset.coco_dict)
    img_ids = [int(dataset.images[i]["id"]) for i in range(count)]
    out = {}
    for iou_type in ("bbox", "segm"):
        m = evaluate_results(gt, results, iou_type, img_ids=img_ids)
        out.update(
            {f"{iou_type}_{k}": v for k, v in m.as_dict().items() if k in ("AP", "AP50", "AP75")}
        )
    return out


# ----------------------------------------------------------------------------- the loop
def train(
    cfg: TrainConfig,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainState:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = pick_device(cfg.device)
    check_precision(cfg.precision, device)
    get_architecture(cfg.arch)  # an unknown --arch fails before the data is read
    dataset, val = training_datasets(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)

    model, meta = build_for_training(cfg, dataset)
    model.to(device).train()
    if cfg.precision != "fp32":  # the inference path's arrangements, for the same reasons
        model.backbone.to(memory_format=torch.channels_last)
        fp32_head_outputs(model)
        thread_roi_pooling(model, threads=1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    state = TrainState()
    last = cfg.out / "last.pt"
    if cfg.resume:
        if not last.is_file():
            raise MrcnnError(f"--resume: no {last} to resume from")
        state = _restore(last, model, optimizer, scheduler)
    else:
        torch.manual_seed(cfg.seed)
    write_json(cfg.out / "config.json", _jsonable(asdict(cfg)), indent=2)

    running: dict[str, float] = {}
    t0 = time.perf_counter()
    steps_timed = 0
    while state.step < cfg.steps:
        indices, flips = batch_plan(cfg, len(dataset), state.step)
        images, targets = load_batch(dataset, indices, flips, device)
        with autocast(cfg.precision, device):
            losses = model(images, targets)
        losses = {k: v.float() for k, v in losses.items()}
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise MrcnnError(f"loss became {float(total)} at step {state.step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        state.step += 1
        steps_timed += 1
        values = {k: v.item() for k, v in losses.items()}
        values["loss"] = total.item()
        for k, v in values.items():
            running[k] = running.get(k, v) * 0.9 + v * 0.1
        if on_step:
            on_step(state.step, running)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            rate = steps_timed / (time.perf_counter() - t0)
            state.history.append(
                {
                    "step": state.step,
                    "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": rate,
                    **values,
                }
            )
        if val is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
            metrics = evaluate_model(model, meta, val, device, cfg.max_val_images)
            state.history.append({"step": state.step, **metrics})
            if on_eval:
                on_eval(state.step, metrics)
            if metrics["segm_AP"] > state.best_segm_ap:
                state.best_segm_ap = metrics["segm_AP"]
                save_checkpoint(
                    cfg.out / "best.pt",
                    model.state_dict(),
                    meta,
                    {"step": state.step, "metrics": metrics},
                )
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            _save_resume(last, model, optimizer, scheduler, state, meta)
            write_metrics(cfg.out, state.history)
    save_checkpoint(cfg.out / "final.pt", model.state_dict(), meta, {"step": state.step})
    write_metrics(cfg.out, state.history)
    return state


def _save_resume(
    path: Path, model, optimizer, scheduler, state: TrainState, meta: ModelMeta
) -> None:
    extra = {
        "step": state.step,
        "best_segm_ap": state.best_segm_ap,
        "history": state.history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(path, model.state_dict(), meta, extra)


def _restore(path: Path, model, optimizer, scheduler) -> TrainState:
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(ckpt.extra["optimizer"])
    scheduler.load_state_dict(ckpt.extra["scheduler"])
    torch.set_rng_state(ckpt.extra["torch_rng"])
    return TrainState(
        int(ckpt.extra["step"]), float(ckpt.extra["best_segm_ap"]), list(ckpt.extra["history"])
    )


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.json (everything), metrics.csv (one row per record) and curves.png."""
    write_json(out / "metrics.json", history, indent=1)
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    plot_curves(out / "curves.png", history)


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    loss_rows = [r for r in history if "loss" in r]
    for name in ("loss", *LOSS_NAMES):
        ax_loss.plot(
            [r["step"] for r in loss_rows],
            [r[name] for r in loss_rows],
            label=LOSS_SHORT.get(name, name),
        )
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training losses")
    ax_loss.legend(fontsize=8)
    ap_rows = [r for r in history if "segm_AP" in r]
    for name in ("bbox_AP", "segm_AP", "segm_AP50", "segm_AP75"):
        ax_ap.plot([r["step"] for r in ap_rows], [r[name] for r in ap_rows], marker="o", label=name)
    ax_ap.set_ylim(0, 1)
    ax_ap.set_xlabel("step")
    ax_ap.set_title("validation AP (COCOeval)")
    ax_ap.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
