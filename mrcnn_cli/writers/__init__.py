"""Writers: turn one image's `Detections` into files under the output folder.

overlay.py draws a preview JPEG, masks.py writes mask PNGs, coco.py builds COCO result
entries; yolo.py, labelme.py and cvat.py write polygon labels (outlines from
polygons.py), csv_table.py a table of objects, crops.py RGBA cut-outs. The path rule
they share lives here so every writer mirrors the input tree the same way:
`<out_dir>/<kind>/<rel with a new suffix>`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mrcnn_cli.names import safe_rel

__all__ = ["output_path", "safe_rel"]


def output_path(out_dir: Path, kind: str, rel: PurePosixPath | str, suffix: str) -> Path:
    """`<out_dir>/<kind>/<rel with suffix>`; an empty suffix drops the extension (a folder)."""
    return Path(out_dir, kind, *safe_rel(rel).with_suffix(suffix).parts)
