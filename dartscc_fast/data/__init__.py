"""Data: the shipped Fashion-MNIST images (``fashion-mnist/``, with their licence) and the loaders
with their seeded train / validation / test split (:mod:`~dartscc_fast.data.datasets`)."""
