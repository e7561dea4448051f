"""The models this project trained itself, installed as ``srrecnn_jax.shipped_models``.

Each folder ``<name>/`` holds ``model/`` (a model folder), ``card.json`` and ``README.md``
(its model card); ``srrecnn_jax.catalog`` finds them by name through
``importlib.resources``. The training configs, metrics and scripts beside them stay in the
source tree.
"""
