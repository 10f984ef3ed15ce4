"""The data layer: seqio preprocessors, the few-shot feature converter, metrics.

Tasks and mixtures are registered in the top-level `tasks` package; this package holds the
pieces they are built from. It never imports the models.
"""
from hypert5.data.converters import EncDecFeatureConverter
from hypert5.data.converters import HyperFeatureConverter
from hypert5.data.converters import converter_for
from hypert5.data.errors import DataError
from hypert5.data.features import hyper_features
from hypert5.data.features import plain_features
from hypert5.data.performance import tf_data_options
from hypert5.data.vocab import get_vocabulary
from hypert5.data.vocab import sentinel_id
