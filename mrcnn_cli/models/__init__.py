"""Model side of the pipeline: names -> builders, weights, our checkpoint format, device."""

from mrcnn_cli.models.loading import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
