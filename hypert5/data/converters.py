"""Feature converters: task features -> the batch the model and trainer read.

Hyper examples are padded, never packed: the hypermodel generates parameters per row, so
two examples sharing a row would have to share generated parameters (unless they are
queries of one task on purpose: rows of Q queries, `fewshot.group_queries`, whose query
features are [Q, length] under one hyper input). Plain encoder-decoder
tasks (the T5-MTF baseline) keep seqio's packing via `seqio.EncDecFeatureConverter`.
"""
from typing import Mapping

import seqio
import tensorflow as tf

from hypert5.data import features as features_lib
from hypert5.data import registry

EncDecFeatureConverter = seqio.EncDecFeatureConverter
_Spec = seqio.FeatureConverter.FeatureSpec


class HyperFeatureConverter(seqio.FeatureConverter):
  """(hyper_inputs, inputs, targets) -> padded model features; t5x token conventions.

  pad = 0 and eos = 1 come from the vocabulary; `decoder_input_tokens` is the target
  shifted right with 0 (bos) in front; `decoder_loss_weights` is 1 on real target tokens.

    {"hyper_inputs": [5, 6, 1], "inputs": [7, 1], "targets": [3, 9, 1]}, lengths 4/3/4 ->
    hyper_encoder_input_tokens [5, 6, 1, 0]   encoder_input_tokens [7, 1, 0]
    decoder_target_tokens      [3, 9, 1, 0]   decoder_input_tokens [0, 3, 9, 1]
    decoder_loss_weights       [1, 1, 1, 0]
  """

  TASK_FEATURES = {
      features_lib.HYPER_INPUTS: _Spec(dtype=tf.int32),
      "inputs": _Spec(dtype=tf.int32),
      "targets": _Spec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "hyper_encoder_input_tokens": _Spec(dtype=tf.int32),
      "encoder_input_tokens": _Spec(dtype=tf.int32),
      "decoder_input_tokens": _Spec(dtype=tf.int32),
      "decoder_target_tokens": _Spec(dtype=tf.int32),
      "decoder_loss_weights": _Spec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = None
  QUERY_FEATURES = ("inputs", "targets")  # [Q, length] with several queries per row
  QUERY_MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                          "decoder_target_tokens", "decoder_loss_weights")

  def __init__(self, pack: bool = False, queries_per_task: int = 1, **kwargs):
    """`queries_per_task` > 1: rows of Q queries sharing one hyper input
    (`fewshot.group_queries`); the query features become [Q, length]."""
    if pack:
      raise ValueError(
          "HyperFeatureConverter: pack=True is not supported; generated parameters are per "
          "row, so hyper examples cannot share a row. Use pack=False.")
    self.queries_per_task = queries_per_task
    if queries_per_task > 1:
      grouped = _Spec(dtype=tf.int32, rank=2, sequence_dim=1)
      self.TASK_FEATURES = {**self.TASK_FEATURES,
                            **{k: grouped for k in self.QUERY_FEATURES}}
      self.MODEL_FEATURES = {**self.MODEL_FEATURES,
                             **{k: grouped for k in self.QUERY_MODEL_FEATURES}}
    super().__init__(pack=False, **kwargs)

  def _convert_example(self, ex: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    targets = ex["targets"]
    out = {
        "hyper_encoder_input_tokens": ex[features_lib.HYPER_INPUTS],
        "encoder_input_tokens": ex["inputs"],
        "decoder_target_tokens": targets,
        "decoder_input_tokens": _shift_right(targets, self.bos_id),
        "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32),
    }
    out.update({k: ex[k] for k in self._passthrough_features})
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    q = self.queries_per_task
    if q == 1:
      ds = self._pack_or_pad(ds, task_feature_lengths)
      return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)
    rows = ds.element_spec["inputs"].shape[0]
    if rows != q:  # e.g. seqio's trim_output_features, which cuts the first axis
      raise ValueError(f"HyperFeatureConverter: rows hold {rows} queries, expected "
                       f"{q}; build grouped tasks with trim_output_features=False (their "
                       "preprocessors trim each query).")
    lengths = dict(task_feature_lengths)
    query_lengths = {k: lengths.pop(k) for k in self.QUERY_FEATURES}
    ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

    @tf.autograph.experimental.do_not_convert
    def convert(ex):
      ex = dict(ex)
      for k, length in query_lengths.items():
        v = ex[k][:, :length]
        v = tf.pad(v, [[0, 0], [0, length - tf.shape(v)[1]]])
        ex[k] = tf.ensure_shape(v, [q, length])
      return self._convert_example(ex)

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    decoder_length = task_feature_lengths["targets"]
    lengths = {
        "hyper_encoder_input_tokens": task_feature_lengths[features_lib.HYPER_INPUTS],
        "encoder_input_tokens": task_feature_lengths["inputs"],
        "decoder_input_tokens": decoder_length,
        "decoder_target_tokens": decoder_length,
        "decoder_loss_weights": decoder_length,
    }
    lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
    return lengths


def _shift_right(targets: tf.Tensor, bos_id: int) -> tf.Tensor:
  """Decoder inputs: targets shifted right along the last axis with `bos_id` in front (as
  seqio's make_autoregressive_inputs for unpacked rank-1 targets, for any rank)."""
  bos = tf.fill(tf.concat([tf.shape(targets)[:-1], [1]], 0), tf.cast(bos_id, targets.dtype))
  return tf.concat([bos, targets[..., :-1]], axis=-1)


def converter_for(task_or_mixture, pack: bool = True) -> seqio.FeatureConverter:
  """The converter matching a task's output features (hyper tasks are never packed)."""
  provider = registry.provider_of(task_or_mixture)
  if features_lib.HYPER_INPUTS in provider.output_features:
    return HyperFeatureConverter(queries_per_task=registry.queries_per_task(provider))
  return seqio.EncDecFeatureConverter(pack=pack)
