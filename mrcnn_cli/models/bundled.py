"""Models that ship inside the package (`--model demo`), found with importlib.resources.

Package data rather than a path beside the source tree, so a wheel or a non-editable
install run from any folder finds them. Torch-free: configs fingerprint these files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# Short name -> file in mrcnn_cli/bundled/.
BUNDLED_MODELS: dict[str, str] = {"demo": "demo_shapes.pt"}


def bundled_model_path(name: str) -> Path:
    """The installed file of a bundled model (KeyError for an unknown name)."""
    return Path(str(resources.files("mrcnn_cli") / "bundled" / BUNDLED_MODELS[name]))


def bundled_or_path(spec: str) -> str:
    """A bundled short name (`demo`) -> its file; anything else unchanged."""
    return str(bundled_model_path(spec)) if spec in BUNDLED_MODELS else spec
