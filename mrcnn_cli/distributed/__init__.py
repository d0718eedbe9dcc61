"""Running one job on many machines: Ray Data workers, or shards merged afterwards.

- `shards`: `--shard K/N` picks a stable 1/N of the inputs; each shard leaves a manifest.
- `merge`: `mrcnn merge` checks the shards' manifests and joins their output folders.
- `ray_engine`: `--engine ray`, one Segmenter per Ray worker (Ray is imported only there).
"""
