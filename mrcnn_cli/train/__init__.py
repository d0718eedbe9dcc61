"""Training: synthetic data, dataset loading and the training loop."""
