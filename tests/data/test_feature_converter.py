"""HyperFeatureConverter: t5x conventions, no packing; plain tasks keep seqio's packing."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from hypert5.data import EncDecFeatureConverter, HyperFeatureConverter, converter_for
from hypert5.data import features

LENGTHS = {"hyper_inputs": 4, "inputs": 3, "targets": 4}


def _ds(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})


def test_converts_and_pads_each_example_on_its_own_row():
  ds = _ds([{"hyper_inputs": [5, 6, 1], "inputs": [7, 1], "targets": [3, 9, 1]},
            {"hyper_inputs": [8, 1], "inputs": [4, 4, 1], "targets": [2, 1]}])
  out = list(HyperFeatureConverter()(ds, LENGTHS).as_numpy_iterator())
  assert len(out) == 2  # never packed: generated parameters are per row
  np.testing.assert_array_equal(out[0]["hyper_encoder_input_tokens"], [5, 6, 1, 0])
  np.testing.assert_array_equal(out[0]["encoder_input_tokens"], [7, 1, 0])
  np.testing.assert_array_equal(out[0]["decoder_target_tokens"], [3, 9, 1, 0])
  np.testing.assert_array_equal(out[0]["decoder_input_tokens"], [0, 3, 9, 1])
  np.testing.assert_array_equal(out[0]["decoder_loss_weights"], [1, 1, 1, 0])
  np.testing.assert_array_equal(out[1]["decoder_input_tokens"], [0, 2, 1, 0])
  for ex in out:
    assert set(ex) == set(HyperFeatureConverter.MODEL_FEATURES)
    assert all(v.dtype == np.int32 for v in ex.values())


def test_rejects_packing_and_over_long_features():
  with pytest.raises(ValueError, match="pack=True is not supported"):
    HyperFeatureConverter(pack=True)
  ds = _ds([{"hyper_inputs": [5, 6, 7, 8, 1], "inputs": [7, 1], "targets": [3, 1]}])
  with pytest.raises(tf.errors.InvalidArgumentError):
    list(HyperFeatureConverter()(ds, LENGTHS))  # seqio's length check: trim upstream


def test_converter_for_picks_by_output_features():
  vocab = seqio.ByteVocabulary(extra_ids=100)

  class _Provider:  # a mixture of no tasks: one query per row
    name, tasks = "fake", ()

    def __init__(self, output_features):
      self.output_features = output_features

  assert isinstance(converter_for(_Provider(features.hyper_features(vocab))),
                    HyperFeatureConverter)
  plain = converter_for(_Provider(features.plain_features(vocab)))
  assert isinstance(plain, EncDecFeatureConverter) and plain.pack
  ds = _ds([{"inputs": [7, 1], "targets": [3, 1]}, {"inputs": [8, 1], "targets": [4, 1]}])
  packed = list(plain(ds, {"inputs": 4, "targets": 4}).as_numpy_iterator())
  assert len(packed) == 1 and list(packed[0]["encoder_segment_ids"]) == [1, 1, 2, 2]
