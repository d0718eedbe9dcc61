"""The model side: where COCO weights come from, our checkpoint format, and what
`load_model` builds (seeded random weights equal torchvision's own builder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from mrcnn_cli.errors import MrcnnError, WeightsNotFoundError
from mrcnn_cli.models.architectures import ARCHITECTURES, get_architecture
from mrcnn_cli.models.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from mrcnn_cli.models.loading import load_model
from mrcnn_cli.models.roi_ops import MultiScaleRoIPool
from mrcnn_cli.models.weights import resolve_weights
from mrcnn_cli.segmenter import Segmenter

V1, V2 = "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"
V1_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
V2_FILE = "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
TINY_META = ModelMeta(
    arch="maskrcnn_resnet18_fpn_lite",
    class_names=("__background__", "circle", "square", "triangle"),
    category_ids=(0, 1, 2, 3),
    settings={"min_size": 128, "max_size": 128},
)


def fake_file(path, content: bytes = b"not really weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def tiny_model() -> MaskRCNN:
    torch.manual_seed(0)
    return get_architecture(TINY_META.arch).build(4, min_size=128, max_size=128)


# --- weight resolution order -------------------------------------------------------


def test_architectures_know_their_coco_weight_files():
    assert get_architecture(V1).weights_file_name == V1_FILE
    assert get_architecture(V2).weights_file_name == V2_FILE


def test_hub_cache_is_used_when_nothing_else_is_there(offline_weights):
    cached = fake_file(offline_weights.hub_dir / V1_FILE)
    assert resolve_weights(get_architecture(V1)) == cached


def test_project_weights_folder_beats_the_hub_cache(offline_weights):
    fake_file(offline_weights.hub_dir / V1_FILE)
    project = fake_file(offline_weights.project_dir / V1_FILE)
    assert resolve_weights(get_architecture(V1)) == project


def test_mrcnn_weights_variable_beats_the_project_folder(offline_weights, tmp_path, monkeypatch):
    fake_file(offline_weights.hub_dir / V1_FILE)
    fake_file(offline_weights.project_dir / V1_FILE)
    from_env = fake_file(tmp_path / "env.pth")
    monkeypatch.setenv("MRCNN_WEIGHTS", str(from_env))
    assert resolve_weights(get_architecture(V1)) == from_env


def test_weights_option_beats_the_mrcnn_weights_variable(offline_weights, tmp_path, monkeypatch):
    fake_file(offline_weights.project_dir / V1_FILE)
    monkeypatch.setenv("MRCNN_WEIGHTS", str(fake_file(tmp_path / "env.pth")))
    explicit = fake_file(tmp_path / "explicit.pth")
    assert resolve_weights(get_architecture(V1), str(explicit)) == explicit


def test_a_missing_weights_option_file_is_an_error_not_a_fallback(offline_weights, tmp_path):
    fake_file(offline_weights.project_dir / V1_FILE)
    with pytest.raises(MrcnnError, match="--weights file not found"):
        resolve_weights(get_architecture(V1), str(tmp_path / "typo.pth"))


def test_a_missing_mrcnn_weights_file_is_an_error_not_a_fallback(
    offline_weights, tmp_path, monkeypatch
):
    fake_file(offline_weights.project_dir / V1_FILE)
    monkeypatch.setenv("MRCNN_WEIGHTS", str(tmp_path / "typo.pth"))
    with pytest.raises(MrcnnError, match=r"\$MRCNN_WEIGHTS file not found"):
        resolve_weights(get_architecture(V1))


@pytest.mark.parametrize("arch_name", [V1, V2])
def test_no_weights_anywhere_names_the_file_the_folders_and_the_url(offline_weights, arch_name):
    arch = get_architecture(arch_name)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(arch)
    message = str(err.value)
    assert arch.weights_file_name in message
    assert str(offline_weights.project_dir) in message
    assert str(offline_weights.hub_dir) in message
    assert arch.coco_weights.url in message
    assert "MRCNN_NO_DOWNLOAD" in message
    assert "\n" not in message


def test_the_compact_architecture_has_no_coco_weights_to_resolve(offline_weights):
    with pytest.raises(MrcnnError, match="no pretrained weights"):
        resolve_weights(get_architecture("maskrcnn_resnet18_fpn_lite"))


# --- our checkpoint format ---------------------------------------------------------


def test_checkpoint_round_trip_keeps_tensors_metadata_and_extra(tmp_path):
    state = tiny_model().state_dict()
    path = tmp_path / "model.pt"
    save_checkpoint(path, state, TINY_META, extra={"step": 7, "metrics": {"segm_ap": 0.25}})
    ckpt = load_checkpoint(path)
    assert ckpt.meta == TINY_META
    assert ckpt.extra == {"step": 7, "metrics": {"segm_ap": 0.25}}
    assert ckpt.state_dict.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(ckpt.state_dict[key], value), key


def test_checkpoint_loads_with_weights_only(tmp_path):
    """Only tensors and plain values inside: no pickled code runs when it is opened."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model().state_dict(), TINY_META)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "mrcnn-checkpoint"
    assert payload["meta"]["class_names"] == list(TINY_META.class_names)


def test_half_storage_loads_back_as_float32_rounded_to_fp16(tmp_path):
    state = tiny_model().state_dict()
    path = tmp_path / "half.pt"
    save_checkpoint(path, state, TINY_META, half=True)
    loaded = load_checkpoint(path).state_dict
    for key, value in state.items():
        if value.is_floating_point():
            assert loaded[key].dtype == torch.float32, key
            assert torch.equal(loaded[key], value.half().float()), key
        else:
            assert torch.equal(loaded[key], value), key
    full = tmp_path / "full.pt"
    save_checkpoint(full, state, TINY_META)
    assert path.stat().st_size < 0.6 * full.stat().st_size


def test_a_file_that_is_not_a_torch_file_is_a_clear_error(tmp_path):
    path = fake_file(tmp_path / "notes.pt", b"these are my notes, not a checkpoint\n")
    with pytest.raises(MrcnnError, match="is not a PyTorch checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(MrcnnError, match="empty"):
        load_checkpoint(fake_file(tmp_path / "empty.pt", b""))


def test_a_plain_state_dict_is_not_mistaken_for_a_checkpoint(tmp_path):
    path = tmp_path / "state_dict.pth"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(MrcnnError, match="not an mrcnn checkpoint.*--weights"):
        load_checkpoint(path)


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "mrcnn-checkpoint", "version": 99, "meta": {}, "model": {}}, path)
    with pytest.raises(MrcnnError, match="newer"):
        load_checkpoint(path)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "mrcnn-checkpoint", "version": 1, "hook": ModelMeta}, path)
    with pytest.raises(MrcnnError, match="cannot read checkpoint"):
        load_checkpoint(path)


# --- load_model --------------------------------------------------------------------


def test_load_model_from_a_checkpoint_takes_classes_and_settings_from_it(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.state_dict(), TINY_META)
    loaded = load_model(str(path), device="cpu", overrides={"box_score_thresh": 0.25})
    assert loaded.class_names == TINY_META.class_names
    assert loaded.category_ids == TINY_META.category_ids
    assert not loaded.model.training
    assert loaded.model.transform.min_size == (128,) and loaded.model.transform.max_size == 128
    assert loaded.model.roi_heads.score_thresh == 0.25
    reference = model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_a_checkpoint_given_by_weights_with_an_architecture_keeps_its_own_classes(tmp_path):
    """A fine-tuned checkpoint of ours passed as --weights: its metadata wins."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model().state_dict(), TINY_META)
    loaded = load_model(V1, weights=str(path), device="cpu")
    assert loaded.meta.arch == TINY_META.arch
    assert loaded.class_names == TINY_META.class_names


def test_weights_that_do_not_fit_the_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(MrcnnError, match="do not fit the architecture"):
        load_model(V1, weights=str(path), device="cpu")


def test_unknown_model_name_is_a_usage_error_listing_the_names():
    with pytest.raises(MrcnnError) as err:
        load_model("maskrcnn_resnet101_fpn", device="cpu")
    assert all(name in str(err.value) for name in ARCHITECTURES)


def test_fp16_on_the_cpu_is_a_usage_error():
    with pytest.raises(MrcnnError, match=r"fp16 \(--half\) needs a CUDA device"):
        load_model(V1, device="cpu", precision="fp16", random_init_seed=0)


def test_bf16_on_a_cpu_without_native_bfloat16_is_a_usage_error(monkeypatch):
    from mrcnn_cli.models import precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(MrcnnError, match="no native bfloat16"):
        load_model(V1, device="cpu", precision="bf16", random_init_seed=0)


def test_an_unknown_precision_is_a_usage_error():
    with pytest.raises(MrcnnError, match="--precision must be one of fp32, bf16, fp16"):
        load_model(V1, device="cpu", precision="int8", random_init_seed=0)


def test_cuda_without_cuda_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MrcnnError, match="CUDA is not available"):
        load_model(V1, device="cuda", random_init_seed=0)


def test_roi_pool_option_swaps_both_roi_extractors_and_still_predicts(tiny_checkpoint):
    loaded = load_model(
        str(tiny_checkpoint), device="cpu", roi_op="pool", overrides={"box_score_thresh": 0.0}
    )
    heads = loaded.model.roi_heads
    assert isinstance(heads.box_roi_pool, MultiScaleRoIPool)
    assert isinstance(heads.mask_roi_pool, MultiScaleRoIPool)
    assert heads.box_roi_pool.output_size == (7, 7) and heads.mask_roi_pool.output_size == (14, 14)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    dets = Segmenter.from_loaded(loaded)(image)
    assert len(dets) > 0 and dets.masks.shape == (len(dets), 96, 128)


def test_a_checkpoint_trained_with_roi_pool_keeps_it_unless_told_otherwise(tmp_path):
    from dataclasses import replace

    from torchvision.ops import MultiScaleRoIAlign

    path = tmp_path / "pool.pt"
    save_checkpoint(
        path, tiny_model().state_dict(), replace(TINY_META, arch_options={"roi_op": "pool"})
    )
    assert isinstance(
        load_model(str(path), device="cpu").model.roi_heads.box_roi_pool, MultiScaleRoIPool
    )
    swapped = load_model(str(path), device="cpu", roi_op="align").model.roi_heads.box_roi_pool
    assert isinstance(swapped, MultiScaleRoIAlign)


@pytest.mark.parametrize(
    ("arch_name", "builder"),
    [
        (V1, torchvision.models.detection.maskrcnn_resnet50_fpn),
        (V2, torchvision.models.detection.maskrcnn_resnet50_fpn_v2),
    ],
)
def test_seeded_random_init_is_torchvisions_builder_after_manual_seed(arch_name, builder):
    """The parity tests rely on this: same seed, same weights, same settings."""
    loaded = load_model(arch_name, device="cpu", random_init_seed=3)
    torch.manual_seed(3)
    reference = builder(weights=None, weights_backbone=None, num_classes=91).eval()
    ours = loaded.model.state_dict()
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    for attr in ("min_size", "max_size", "image_mean", "image_std", "size_divisible"):
        assert getattr(loaded.model.transform, attr) == getattr(reference.transform, attr)
    for attr in ("nms_thresh", "detections_per_img", "score_thresh"):
        assert getattr(loaded.model.roi_heads, attr) == getattr(reference.roi_heads, attr)
    assert loaded.model.rpn._post_nms_top_n == reference.rpn._post_nms_top_n
    assert loaded.model.rpn._pre_nms_top_n == reference.rpn._pre_nms_top_n
    assert loaded.class_names[1] == "person" and len(loaded.class_names) == 91
    assert loaded.category_ids == tuple(range(91))


def test_a_torchvision_coco_state_dict_loads_through_the_weights_option(tmp_path):
    """torchvision's COCO file comes from a FrozenBatchNorm model (no num_batches_tracked)."""
    torch.manual_seed(5)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    released_layout = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91)
    state = released_layout.state_dict()
    path = tmp_path / V1_FILE
    torch.save(state, path)
    loaded = load_model(V1, weights=str(path), device="cpu")
    ours = loaded.model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key], value), key
    assert loaded.source == str(path)
