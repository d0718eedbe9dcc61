"""`--shard K/N`: a deterministic 1/N of the inputs, for job arrays (SLURM, Kubernetes).

An input belongs to shard `sha256(rel) mod N`, where `rel` is the relative path its
outputs are named after: the choice depends neither on the order of the list nor on
the machine, so N independent processes given the same arguments split the inputs
into N disjoint parts that together are all of them. Image ids are assigned over the
whole input list before the cut, so they agree across shards.

Each shard writes a manifest, `<out>/.mrcnn/shards/shard-K-of-N.json`: N, K, the
settings hash, a digest of the whole input list and the shard's own items (their
index in the whole list, rel, kind, image id and path). `mrcnn merge` reads them to
prove that the shards fit together and that no image is missing or doubled.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.atomic import write_json
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.journal import STATE_DIR
from mrcnn_cli.lock import LOCK_NAME
from mrcnn_cli.sources import SourceItem

MANIFEST_DIR = "shards"
MANIFEST_FORMAT = 1
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def shard_of(rel: PurePosixPath | str, count: int) -> int:
    """The shard (0..count-1) an input with this relative path belongs to."""
    key = str(PurePosixPath(rel)).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise MrcnnError(
                f"--shard {self.index}/{self.count}: need K/N with N >= 1 and K in 0..N-1"
            )

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """`"2/8"` -> ShardSpec(2, 8)."""
        match = _SPEC.fullmatch(text)
        if match is None:
            raise MrcnnError(f"--shard takes K/N with K in 0..N-1 (e.g. 0/4), not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, rel: PurePosixPath | str) -> bool:
        return shard_of(rel, self.count) == self.index

    def select(self, items: Sequence[SourceItem]) -> list[SourceItem]:
        """This shard's items, in their input order."""
        return [it for it in items if self.owns(it.rel)]


def shard_lock_name(shard: ShardSpec | None) -> str:
    """The output lock a run takes: shards of one job each lock their own part."""
    return LOCK_NAME if shard is None else f"{LOCK_NAME}-{shard.tag}"


def shard_file_name(name: str, shard: ShardSpec | None) -> str:
    """`predictions.json` -> `predictions.shard-0-of-4.json`: shards may share a folder."""
    if shard is None:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{shard.tag}{dot}{suffix}"


def inputs_digest(items: Sequence[SourceItem]) -> str:
    """A digest of the whole input list (kinds and rels, in order)."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.kind}\t{it.rel}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class ShardItem:
    index: int  # position in the whole input list
    rel: str
    kind: str
    image_id: int | None
    path: str


@dataclass(frozen=True)
class ShardManifest:
    shard: ShardSpec
    settings_hash: str
    inputs_digest: str
    total_inputs: int
    items: tuple[ShardItem, ...]
    save: tuple[str, ...] = ()  # the --save kinds: merge rebuilds the run-level files
    class_names: tuple[str, ...] = ()  # the model's, for the files that list classes
    category_ids: tuple[int, ...] = ()
    export: tuple[tuple[str, Any], ...] = ()  # ExportOptions: how merge lays out datasets

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "shard": self.shard.index,
            "num_shards": self.shard.count,
            "settings_hash": self.settings_hash,
            "inputs_digest": self.inputs_digest,
            "total_inputs": self.total_inputs,
            "items": [[i.index, i.rel, i.kind, i.image_id, i.path] for i in self.items],
            "save": list(self.save),
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "export": dict(self.export),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardManifest:
        """Raises ValueError, KeyError or TypeError if the manifest is malformed."""
        if data["format"] != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {data['format']!r}")
        items = []
        for index, rel, kind, image_id, path in data["items"]:
            if not isinstance(index, int) or not isinstance(rel, str):
                raise TypeError("bad item")
            if image_id is not None and not isinstance(image_id, int):
                raise TypeError("bad image id")
            items.append(ShardItem(index, rel, str(kind), image_id, str(path)))
        fields = (data["shard"], data["num_shards"], data["total_inputs"])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields):
            raise TypeError("shard numbers must be integers")
        return cls(
            shard=ShardSpec(data["shard"], data["num_shards"]),
            settings_hash=str(data["settings_hash"]),
            inputs_digest=str(data["inputs_digest"]),
            total_inputs=data["total_inputs"],
            items=tuple(items),
            save=tuple(str(k) for k in data.get("save", ())),
            class_names=tuple(str(n) for n in data.get("class_names", ())),
            category_ids=tuple(int(i) for i in data.get("category_ids", ())),
            export=tuple(sorted(dict(data.get("export", {})).items())),
        )


def manifest_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR / MANIFEST_DIR


def write_manifest(
    out: Path,
    shard: ShardSpec,
    all_items: Sequence[SourceItem],
    image_ids: Mapping[str, int],
    settings_hash: str,
    save: Sequence[str] = (),
    class_names: Sequence[str] = (),
    category_ids: Sequence[int] = (),
    export: Mapping[str, Any] | None = None,
) -> Path:
    """Record what this shard was cut from and what it holds (before any image is run),
    and what `mrcnn merge` needs to rebuild the run-level files (kinds, class names)."""
    mine = [
        ShardItem(i, str(it.rel), it.kind, image_ids.get(str(it.rel)), str(it.path))
        for i, it in enumerate(all_items)
        if shard.owns(it.rel)
    ]
    manifest = ShardManifest(
        shard,
        settings_hash,
        inputs_digest(all_items),
        len(all_items),
        tuple(mine),
        tuple(save),
        tuple(class_names),
        tuple(int(i) for i in category_ids),
        tuple(sorted((export or {}).items())),
    )
    path = manifest_dir(out) / f"{shard.tag}.json"
    write_json(path, manifest.to_json())
    return path


def read_manifests(folder: Path) -> list[ShardManifest]:
    """Every shard manifest in an output folder (several when shards share it)."""
    found = []
    for path in sorted(manifest_dir(folder).glob("shard-*-of-*.json")):
        try:
            found.append(ShardManifest.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError, MrcnnError) as exc:
            raise MrcnnError(f"cannot read shard manifest {path}: {exc}") from exc
    return found
