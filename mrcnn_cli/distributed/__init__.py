"""Running one job on many machines: Ray workers, or shards merged afterwards.

(`--shard K/N` itself lives in `mrcnn_cli/shards.py`: the engine and the run-level
writers use it, and they sit below this package.)

- `merge`: `mrcnn merge` checks the shards' manifests and joins their output folders.
- `ray_engine`: `--engine ray`, one Segmenter per Ray worker (Ray is imported only there).
"""
