"""The model zoo: small reference models, the bundled data sets they train on, and a training loop.

Beside the studies, for users, tests, studies and benchmarks; neither the core nor the layers import it.

- :mod:`lpnum.zoo.models`: ``MLP``, ``CNN``, ``Transformer`` of stock Flax layers, and the ``ZOO`` registry.
- :mod:`lpnum.zoo.data`: ``digits`` (scikit-learn's bundled digits), ``sequence_task``, ``batches``.
- :mod:`lpnum.zoo.moe`: ``MoE``, a mixture-of-experts MLP (router, top-k, grouped matmuls).
- :mod:`lpnum.zoo.train`: ``fit``, ``logits``, ``accuracy`` for any Flax classifier.
"""
