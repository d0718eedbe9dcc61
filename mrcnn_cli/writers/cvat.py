"""CVAT for images 1.1: one `cvat.xml` for the whole run, assembled at the end.

A run is resumable and images finish in batches, so the XML is never edited in place:
each image becomes a small JSON-able fragment (`cvat_fragment`) that the engine keeps
(in memory or its journal), and `write_cvat_xml` streams all of them, in input order,
into the file once, atomically. Image ids are positions in that order (0-based).

Every part of an instance is a `<polygon source="auto">` with a `score` attribute;
the parts of a multi-part instance share a `group_id` (CVAT's grouping, 1-based
instance number; single-part instances are left ungrouped). Holes are filled (outer
outlines only); an instance with no polygon (a one-pixel or one-pixel-wide mask) has no
shape. Labels (the model's real classes) are declared in `<meta>` with the `score`
attribute, so CVAT accepts the file as an annotation upload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import XMLGenerator

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.polygons import instance_polygons

CVAT_VERSION = "1.1"


def cvat_points(polygon: Any) -> str:
    """`x1,y1;x2,y2;...` with 2 decimals, as CVAT writes them."""
    return ";".join(f"{float(x):.2f},{float(y):.2f}" for x, y in polygon)


def cvat_fragment(
    dets: Detections,
    rel: PurePosixPath | str,
    height: int,
    width: int,
    epsilon: float = 0.0,
) -> dict[str, Any]:
    """One image as a JSON-able record: name (the input's rel path), size, polygons."""
    names = dets.names
    polygons = []
    for i, parts in instance_polygons(dets, epsilon, "CVAT polygons"):
        group_id = i + 1 if len(parts) > 1 else 0
        for part in parts:
            polygons.append(
                {
                    "label": names[i],
                    "points": cvat_points(part.tolist()),
                    "score": round(float(dets.scores[i]), 4),
                    "group_id": group_id,
                }
            )
    return {
        "name": str(PurePosixPath(rel)),
        "width": int(width),
        "height": int(height),
        "polygons": polygons,
    }


class _Xml:
    """A thin indenting wrapper over `XMLGenerator` (which escapes text and attributes)."""

    def __init__(self, out: Any) -> None:
        self._gen = XMLGenerator(out, encoding="utf-8", short_empty_elements=True)
        self._depth = 0

    def start(self, tag: str, attrs: Mapping[str, str] | None = None) -> None:
        if self._depth:  # the declaration already ends its line
            self._gen.ignorableWhitespace("\n" + "  " * self._depth)
        self._gen.startElement(tag, dict(attrs or {}))
        self._depth += 1

    def end(self, tag: str, inline: bool = False) -> None:
        self._depth -= 1
        if not inline:
            self._gen.ignorableWhitespace("\n" + "  " * self._depth)
        self._gen.endElement(tag)

    def leaf(self, tag: str, text: str, attrs: Mapping[str, str] | None = None) -> None:
        self.start(tag, attrs)
        self._gen.characters(text)
        self.end(tag, inline=True)

    def document(self) -> None:
        self._gen.startDocument()

    def finish(self) -> None:
        self._gen.ignorableWhitespace("\n")
        self._gen.endDocument()


def _write_meta(xml: _Xml, labels: Sequence[str], size: int, task_name: str) -> None:
    xml.start("meta")
    xml.start("task")
    xml.leaf("name", task_name)
    xml.leaf("size", str(size))
    xml.leaf("mode", "annotation")
    xml.leaf("overlap", "0")
    xml.leaf("flipped", "False")
    xml.start("labels")
    for name in labels:
        xml.start("label")
        xml.leaf("name", name)
        xml.leaf("type", "polygon")
        xml.start("attributes")
        xml.start("attribute")
        xml.leaf("name", "score")
        xml.leaf("mutable", "False")
        xml.leaf("input_type", "text")
        xml.leaf("default_value", "")
        xml.leaf("values", "")
        xml.end("attribute")
        xml.end("attributes")
        xml.end("label")
    xml.end("labels")
    xml.end("task")
    xml.end("meta")


def _write_image(xml: _Xml, image_id: int, fragment: Mapping[str, Any]) -> None:
    attrs = {
        "id": str(image_id),
        "name": str(fragment["name"]),
        "width": str(int(fragment["width"])),
        "height": str(int(fragment["height"])),
    }
    polygons = fragment["polygons"]
    if not polygons:
        xml.start("image", attrs)
        xml.end("image", inline=True)
        return
    xml.start("image", attrs)
    for polygon in polygons:
        shape = {
            "label": str(polygon["label"]),
            "source": "auto",
            "occluded": "0",
            "points": str(polygon["points"]),
            "z_order": "0",
        }
        if polygon.get("group_id"):
            shape["group_id"] = str(int(polygon["group_id"]))
        xml.start("polygon", shape)
        xml.leaf("attribute", f"{float(polygon['score']):.4f}", {"name": "score"})
        xml.end("polygon")
    xml.end("image")


def write_cvat_xml(
    path: Path,
    labels: Sequence[str],
    fragments_in_order: Sequence[Mapping[str, Any]],
    task_name: str = "mrcnn",
) -> None:
    """Stream `<annotations>` (version, meta with `labels`, one `<image>` per fragment).

    `labels` are the class names to declare (e.g. `classes.real_class_names(...)`).
    The fragments are read once, in order, and written as they are read (a lazy
    sequence keeps memory flat); `<size>` needs their count up front. Written atomically.
    """
    fragments = fragments_in_order
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        xml = _Xml(out)
        xml.document()
        xml.start("annotations")
        xml.leaf("version", CVAT_VERSION)
        _write_meta(xml, labels, len(fragments), task_name)
        for image_id, fragment in enumerate(fragments):
            _write_image(xml, image_id, fragment)
        xml.end("annotations")
        xml.finish()
