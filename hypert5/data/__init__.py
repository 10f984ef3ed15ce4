"""The data layer: seqio preprocessors, the few-shot feature converter, metrics.

Tasks and mixtures are registered in the top-level `tasks` package; this package holds the
pieces they are built from. It never imports the models.

The names below load their module (and with it TensorFlow and seqio) when first used, so
that importing a TensorFlow-free submodule (errors, names) does not pull them in.
"""
import importlib

_EXPORTS = {
    "EncDecFeatureConverter": "converters", "HyperFeatureConverter": "converters",
    "converter_for": "converters", "DataError": "errors", "hyper_features": "features",
    "plain_features": "features", "tf_data_options": "performance",
    "get_vocabulary": "vocab", "sentinel_id": "vocab",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
  return sorted([*globals(), *_EXPORTS])
