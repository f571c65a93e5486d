"""Training and evaluation of the StyA2K network (model/): the trainer and its campaign, data and packs, losses,
the quality harness, run logs and plots, and the export of release weights.

Imports point one way: training/ uses model/, and neither model/ nor service/ imports training/ (the inference
image ships without it; tests/training/test_layering.py checks this)."""
