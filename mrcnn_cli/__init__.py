"""mrcnn: batch instance segmentation with Mask R-CNN from the command line."""

__version__ = "0.1.0"
