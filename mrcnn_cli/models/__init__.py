"""Model side of the pipeline: architectures, weights resolution, our checkpoint format,
and loading onto a device (`loading.load_model`). Nothing is imported here, so the
torch-free modules (`bundled`) can be used without importing torch."""
