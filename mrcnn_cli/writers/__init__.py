"""Writers: turn one image's `Detections` into files under the output folder.

overlay.py draws a preview JPEG, masks.py writes mask PNGs, coco.py builds COCO result
entries; yolo.py, labelme.py and cvat.py write polygon labels (outlines from
polygons.py), csv_table.py a table of objects, crops.py RGBA cut-outs. The path rule
they share lives here so every writer mirrors the input tree the same way:
`<out_dir>/<kind>/<rel with a new suffix>`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def safe_rel(rel: PurePosixPath | str) -> PurePosixPath:
    """`rel` as a relative POSIX path, refusing anything that could escape the output folder.

    Relative paths come from the input walk; a bug there must not write outside `out/`.
    """
    rel = PurePosixPath(rel)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.name in ("", "."):
        raise ValueError(f"not a safe relative path for an output file: {str(rel)!r}")
    return rel


def output_path(out_dir: Path, kind: str, rel: PurePosixPath | str, suffix: str) -> Path:
    """`<out_dir>/<kind>/<rel with suffix>`; an empty suffix drops the extension (a folder)."""
    return Path(out_dir, kind, *safe_rel(rel).with_suffix(suffix).parts)
