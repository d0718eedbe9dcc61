"""`mrcnn train --data PATH`: what the labelling tools export, read into one training set.

One reader per format, each returning the same thing, a COCO instances dict (absolute
image paths as `file_name`, RLE masks, `area`, `bbox`, `iscrowd`) that
`CocoInstanceDataset` trains from and validation scores with COCOeval:

- COCO instances JSON (CVAT's, Datumaro's, FiftyOne's exports, our `coco-dataset`);
  images under `images_root` from its `info` (our export), else Datumaro's layout
  (`annotations/instances_<subset>.json` beside `images/<subset>/` or `images/`), else
  the JSON's folder; `--images` overrides.
- YOLO-seg `data.yaml` (Ultralytics): its `train` (or `val`) split, a folder, a list
  file or a list of them; labels found by Ultralytics' rule (last `/images/` ->
  `/labels/`, suffix `.txt`); class `k` is `names[k]`.
- a folder of LabelMe JSON (searched recursively): `polygon`, `rectangle` and `circle`
  shapes; shapes sharing a `group_id` and label are one instance; `imagePath` is
  relative to the JSON.
- CVAT for images 1.1 XML: `<polygon>` and `<box>` shapes, grouped by `group_id`;
  images under `--images`, else `images/` beside the XML, else the XML's folder.

Polygons are filled the way our writers trace them (vertices at pixel centres,
`polygons.polygons_to_mask`), so segment -> export -> train reads back the same masks.
Refused, in one line naming the file: a label not in the class list (the format's own,
or `--classes` where given) and a polygon with fewer than three points. COCO files keep
the rules of `--ann` (degenerate polygons are skipped with a warning).
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mrcnn_cli.coco_file import read_coco_instances, read_json
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.sources import IMAGE_EXTS
from mrcnn_cli.writers.polygons import polygons_to_mask

FORMATS = ("coco", "yolo", "labelme", "cvat")


@dataclass
class LabelSet:
    """A training set read from a tool's export: a COCO dict, and the folder its
    relative `file_name`s are under (absolute names ignore it)."""

    coco: dict[str, Any]
    images_dir: Path
    source: Path
    format: str


# ----------------------------------------------------------------------------- shared
class _Builder:
    """Collects images and instance masks into a COCO dict with the final class list."""

    def __init__(self, source: Path, class_names: Sequence[str]) -> None:
        self.source = source
        self.names = list(class_names)
        self.index = {name: k + 1 for k, name in enumerate(self.names)}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def category(self, label: str, where: Path) -> int:
        if label not in self.index:
            known = ", ".join(self.names) or "(none)"
            raise MrcnnError(f"{where}: label {label!r} is not in the class list ({known})")
        return self.index[label]

    def image(self, path: Path, width: int, height: int) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": str(path), "width": int(width), "height": int(height)}
        )
        return image_id

    def instance(self, image_id: int, category_id: int, mask: np.ndarray) -> None:
        if not mask.any():
            return
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle).tolist()],
                "iscrowd": 0,
            }
        )

    def result(self, images_dir: Path, fmt: str) -> LabelSet:
        categories = [
            {"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(self.names)
        ]
        coco = {"images": self.images, "annotations": self.annotations, "categories": categories}
        return LabelSet(coco, images_dir, self.source, fmt)


def _polygon(points: Any, where: Path, what: str) -> np.ndarray:
    """An [N, 2] float polygon; fewer than three points is a one-line error."""
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(array) < 3:
        raise MrcnnError(f"{where}: {what} is a polygon with {len(array)} point(s); "
                         "a polygon needs at least 3")  # fmt: skip
    if not np.isfinite(array).all():
        raise MrcnnError(f"{where}: {what} has a coordinate that is not a number")
    return array


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as decoded (EXIF orientation applied), from the header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise MrcnnError(f"image file not found: {path}") from None
    except OSError as exc:
        raise MrcnnError(f"{path}: not a readable image ({exc})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_classes(given: Sequence[str] | None, own: Sequence[str], where: Path) -> list[str]:
    """The class list: `--classes` where given (the format's own labels must be in it)."""
    if not given:
        return list(own)
    missing = [name for name in own if name not in given]
    if missing:
        raise MrcnnError(f"{where}: label {missing[0]!r} is not in the class list "
                         f"({', '.join(given)})")  # fmt: skip
    return list(given)


# ----------------------------------------------------------------------------- COCO
def _coco_images_dir(path: Path, data: dict[str, Any]) -> Path:
    root = (data.get("info") or {}).get("images_root") if isinstance(data, dict) else None
    if isinstance(root, str) and root:
        return (path.parent / root).resolve()
    if path.parent.name == "annotations":
        subset = path.stem.split("_", 1)[1] if "_" in path.stem else ""
        images = path.parent.parent / "images"
        if subset and (images / subset).is_dir():
            return images / subset
        if images.is_dir():
            return images
    return path.parent


def read_coco(path: Path, classes: Sequence[str] | None, images: Path | None) -> LabelSet:
    data = read_coco_instances(path)
    images_dir = images or _coco_images_dir(path, data)
    if classes:
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        used = sorted({names.get(int(a["category_id"]), str(a["category_id"]))
                       for a in data["annotations"]})  # fmt: skip
        _check_classes(classes, used, path)
        new_id = {cid: classes.index(name) + 1 for cid, name in names.items() if name in classes}
        data = {
            **data,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)],
            "annotations": [
                {**a, "category_id": new_id[int(a["category_id"])]} for a in data["annotations"]
            ],
        }
    return LabelSet(data, images_dir, path, "coco")


# ----------------------------------------------------------------------------- YOLO
def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MrcnnError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MrcnnError(
            f"{path} is not a readable YAML file: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise MrcnnError(f"{path} is not a YOLO data.yaml (expected a mapping)")
    return data


def _yolo_names(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise MrcnnError(f"{path}: 'names' keys must be class indices 0..N-1") from None
        if keys != list(range(len(keys))):
            raise MrcnnError(f"{path}: 'names' keys must be class indices 0..N-1")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise MrcnnError(f"{path} has no 'names' list of classes")


def _yolo_images(root: Path, entry: Any, path: Path) -> list[Path]:
    """The image files of a split entry: folders (recursive), list files, or a list."""
    found: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        where = Path(str(item))
        where = where if where.is_absolute() else root / where
        if where.is_dir():
            found += sorted(
                p for p in where.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
            )
        elif where.is_file() and where.suffix == ".txt":
            for line in where.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    rel = line[2:] if line.startswith("./") else line
                    p = Path(rel)
                    found.append(p if p.is_absolute() else where.parent / p)
        else:
            raise MrcnnError(f"{path}: split {str(item)!r} is neither a folder nor a .txt list "
                             f"({where} not found)")  # fmt: skip
    return found


def yolo_label_file(image: Path) -> Path:
    """Ultralytics' rule: the last `/images/` of the path becomes `/labels/`, suffix .txt."""
    text = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in text:
        head, _, tail = text.rpartition(sa)
        text = head + sb + tail
    return Path(text).with_suffix(".txt")


def read_yolo(path: Path, classes: Sequence[str] | None, split: str = "train") -> LabelSet:
    data = _yaml(path)
    own = _yolo_names(data, path)
    names = _check_classes(classes, own, path)
    root = Path(str(data.get("path") or path.parent))
    root = root if root.is_absolute() else path.parent / root
    if split not in data:
        raise MrcnnError(f"{path} has no {split!r} split")
    builder = _Builder(path, names)
    for image in _yolo_images(root, data[split], path):
        width, height = _image_size(image)
        image_id = builder.image(image, width, height)
        label_file = yolo_label_file(image)
        if not label_file.is_file():
            continue  # Ultralytics: an image without a label file is a background image
        for n, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            where = Path(f"{label_file}:{n}")
            try:
                index, values = int(tokens[0]), [float(v) for v in tokens[1:]]
            except ValueError:
                raise MrcnnError(f"{where}: not a 'class x y ...' line") from None
            if not 0 <= index < len(own):
                raise MrcnnError(f"{where}: class {index} is not in the class list "
                                 f"(0..{len(own) - 1}: {', '.join(own)})")  # fmt: skip
            category = builder.category(own[index], where)
            if len(values) == 4:  # a box line (x_centre y_centre w h): its rectangle
                cx, cy, w, h = values
                values = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2,
                          cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]  # fmt: skip
            if len(values) % 2:
                raise MrcnnError(f"{where}: an odd number of coordinates")
            polygon = _polygon(values, where, f"the {own[index]!r} outline")
            polygon = polygon * np.array([width, height])
            builder.instance(image_id, category, polygons_to_mask([polygon], height, width))
    return builder.result(path.parent, "yolo")


# ----------------------------------------------------------------------------- LabelMe
_LABELME_AREA_SHAPES = ("polygon", "rectangle", "circle")


def _labelme_shape_points(shape: dict[str, Any], where: Path, what: str) -> np.ndarray:
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points") or []
    if kind == "polygon":
        return _polygon(points, where, what)
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(array) != 2:
        raise MrcnnError(f"{where}: {what} ({kind}) needs 2 points, has {len(array)}")
    if kind == "rectangle":
        (x0, y0), (x1, y1) = array
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    (cx, cy), (px, py) = array  # circle: centre and a point on it
    r = math.hypot(px - cx, py - cy)
    angles = np.linspace(0, 2 * np.pi, max(12, int(2 * np.pi * r)), endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def read_labelme(folder: Path, classes: Sequence[str] | None) -> LabelSet:
    files = sorted(p for p in folder.rglob("*.json") if p.is_file())
    docs = []
    for path in files:
        doc = read_json(path, "LabelMe")
        if isinstance(doc, dict) and isinstance(doc.get("shapes"), list):
            docs.append((path, doc))
    if not docs:
        raise MrcnnError(f"{folder}: no LabelMe JSON files (with 'shapes') found in it")
    own = sorted(
        {
            str(s.get("label"))
            for _, doc in docs
            for s in doc["shapes"]
            if isinstance(s, dict) and (s.get("shape_type") or "polygon") in _LABELME_AREA_SHAPES
        }
    )
    builder = _Builder(folder, classes or own)
    for path, doc in docs:
        ref = doc.get("imagePath")
        if not isinstance(ref, str) or not ref:
            raise MrcnnError(f"{path}: no 'imagePath'")
        image = (path.parent / ref.replace("\\", "/")).resolve()
        height, width = doc.get("imageHeight"), doc.get("imageWidth")
        if not isinstance(height, int) or not isinstance(width, int):
            width, height = _image_size(image)
        image_id = builder.image(image, width, height)
        instances: dict[Any, tuple[int, list[np.ndarray]]] = {}
        for k, shape in enumerate(doc["shapes"]):
            if not isinstance(shape, dict):
                raise MrcnnError(f"{path}: shape #{k + 1} is not a JSON object")
            label = str(shape.get("label"))
            kind = shape.get("shape_type") or "polygon"
            if kind not in _LABELME_AREA_SHAPES:
                warnings.warn(f"{path}: shape #{k + 1} ({label!r}) is a {kind}, which has no "
                              "area; skipped", stacklevel=2)  # fmt: skip
                continue
            category = builder.category(label, path)
            polygon = _labelme_shape_points(shape, path, f"shape #{k + 1} ({label!r})")
            group = shape.get("group_id")
            key = (label, group) if group is not None else ("#", k)
            instances.setdefault(key, (category, []))[1].append(polygon)
        for category, polygons in instances.values():
            builder.instance(image_id, category, polygons_to_mask(polygons, height, width))
    return builder.result(folder, "labelme")


# ----------------------------------------------------------------------------- CVAT
def _cvat_points(text: str, where: Path, what: str) -> np.ndarray:
    try:
        values = [float(v) for pair in text.split(";") if pair for v in pair.split(",")]
    except ValueError:
        raise MrcnnError(f"{where}: {what} has points that are not numbers") from None
    return _polygon(values, where, what)


def read_cvat(path: Path, classes: Sequence[str] | None, images: Path | None) -> LabelSet:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise MrcnnError(f"annotation file not found: {path}") from None
    except (OSError, ET.ParseError) as exc:
        raise MrcnnError(f"{path} is not a readable XML file: {exc}") from None
    if root.tag != "annotations":
        raise MrcnnError(f"{path} is not a CVAT for images XML (root <{root.tag}>)")
    declared = [
        (label.findtext("name") or "").strip() for label in root.iterfind("./meta/*/labels/label")
    ]
    own = [n for n in declared if n] or sorted(
        {el.get("label", "") for el in root.iter() if el.tag in ("polygon", "box")}
    )
    names = _check_classes(classes, own, path)
    if images is None:
        images = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    builder = _Builder(path, names)
    for image_el in root.iterfind("image"):
        name = image_el.get("name", "")
        where = Path(f"{path} (image {name!r})")
        try:
            width, height = int(image_el.get("width", "")), int(image_el.get("height", ""))
        except ValueError:
            raise MrcnnError(f"{where}: no integer width and height") from None
        image_id = builder.image(images / name, width, height)
        instances: dict[Any, tuple[int, list[np.ndarray]]] = {}
        for k, shape in enumerate(image_el):
            label = shape.get("label", "")
            what = f"<{shape.tag}> #{k + 1} ({label!r})"
            if shape.tag == "polygon":
                polygon = _cvat_points(shape.get("points", ""), where, what)
            elif shape.tag == "box":
                try:
                    x0, y0, x1, y1 = (float(shape.get(a, "")) for a in ("xtl", "ytl", "xbr", "ybr"))
                except ValueError:
                    raise MrcnnError(f"{where}: {what} has no numeric corners") from None
                polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            else:
                if shape.tag in ("polyline", "points", "mask", "ellipse", "cuboid", "skeleton"):
                    warnings.warn(f"{where}: {what} is not read (only polygons and boxes)",
                                  stacklevel=2)  # fmt: skip
                continue
            category = builder.category(label, where)
            group = shape.get("group_id")
            key = (label, group) if group not in (None, "", "0") else ("#", k)
            instances.setdefault(key, (category, []))[1].append(polygon)
        for category, polygons in instances.values():
            builder.instance(image_id, category, polygons_to_mask(polygons, height, width))
    return builder.result(images, "cvat")


# ----------------------------------------------------------------------------- dispatch
def locate(path: Path) -> tuple[str, Path]:
    """(format, file or folder to read) for a path, from what it is: a file by its
    suffix; a folder by what it holds (a `data.yaml`, a CVAT export's `annotations.xml`,
    one `annotations/instances_*.json`), else a folder of LabelMe JSON."""
    if path.is_dir():
        if (path / "data.yaml").is_file():
            return "yolo", path / "data.yaml"
        if (path / "annotations.xml").is_file():
            return "cvat", path / "annotations.xml"
        found = sorted((path / "annotations").glob("instances_*.json"))
        if len(found) == 1:
            return "coco", found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise MrcnnError(f"{path}: several COCO files ({names}); give one of them")
        return "labelme", path
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yolo", path
    if suffix == ".xml":
        return "cvat", path
    if suffix == ".json":
        return "coco", path
    raise MrcnnError(f"{path}: not a training data format mrcnn reads (a COCO .json, a YOLO "
                     "data.yaml, a CVAT .xml, or a folder of LabelMe .json)")  # fmt: skip


def detect_format(path: Path | str) -> str:
    """Which reader a path needs (see `locate`)."""
    return locate(Path(path))[0]


def read_labels(
    path: Path | str,
    classes: Sequence[str] | None = None,
    images: Path | None = None,
    split: str = "train",
) -> LabelSet:
    """Read a tool's export at `path` (format detected) into a `LabelSet`.

    `classes` fixes the class list and its order (every label must be in it); `images`
    is the image folder for formats that name images relative to one (COCO, CVAT);
    `split` is the YOLO split to read.
    """
    path = Path(path)
    if not path.exists():
        raise MrcnnError(f"training data not found: {path}")
    fmt, path = locate(path)
    if fmt == "coco":
        return read_coco(path, classes, images)
    if fmt == "yolo":
        return read_yolo(path, classes, split)
    if fmt == "cvat":
        return read_cvat(path, classes, images)
    return read_labelme(path, classes)
