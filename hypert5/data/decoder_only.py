"""Decoder-only feature conversion: (hyper_inputs, inputs, targets) -> one right-padded
token stream for a causal LM (HyperLlama and its baselines), loss on the targets only.

The stream is `inputs ++ targets` (with `few_shot="in_context"`: `hyper_inputs ++ inputs ++
targets`, the few-shot-in-context baseline), right-padded with 0. Right padding needs no
padding mask under causal attention: a real token never sees a pad. Fields, t5x style:

  decoder_target_tokens  the stream
  decoder_input_tokens   the stream shifted right, `bos_id` in front (seqio's
                         make_autoregressive_inputs; 0 is t5x's convention, a Llama
                         tokenizer's <s> is 1)
  decoder_loss_weights   1 on target tokens, 0 on inputs, few-shot text and padding
  hyper_input_tokens     hyper_inputs, right-padded (few_shot="hyper" only): the hyper
                         stream's few-shot text

    {"hyper_inputs": [5, 6, 1], "inputs": [7, 1], "targets": [3, 9, 1]}, lengths 4 / 3 / 4:
    hyper_input_tokens     [5, 6, 1, 0]
    decoder_target_tokens  [7, 1, 3, 9, 1, 0, 0]
    decoder_input_tokens   [0, 7, 1, 3, 9, 1, 0]
    decoder_loss_weights   [0, 0, 1, 1, 1, 0, 0]

To generate, feed `decoder_input_tokens[:, :prompt_length]` with prompt_length = (index of
the first target) + 1 (`prompt_lengths`). Never packed, as HyperFeatureConverter: the
generated prefix is per row. Every task that HyperFeatureConverter reads (S-NI, P3,
BIG-bench, synthetic, in their hyper / icl / plain modes) converts unchanged.
"""
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from hypert5.data import features as features_lib
from hypert5.data.names import FEW_SHOT, HYPER_INPUT_TOKENS

_Spec = seqio.FeatureConverter.FeatureSpec
_DECODER = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")


class DecoderOnlyFeatureConverter(seqio.FeatureConverter):
  """See the module docstring. `few_shot`: "hyper" (hyper_inputs feed the hyper stream),
  "in_context" (they are prepended to the stream), "none" (the task has no hyper_inputs,
  e.g. an icl or plain mode task)."""

  TASK_FEATURES = {}  # set per instance from `few_shot`
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = None

  def __init__(self, few_shot: str = "hyper", pack: bool = False, bos_id: int = 0, **kwargs):
    if few_shot not in FEW_SHOT:
      raise ValueError(f"DecoderOnlyFeatureConverter: few_shot={few_shot!r}; expected one of "
                       f"{FEW_SHOT}")
    if pack:
      raise ValueError(
          "DecoderOnlyFeatureConverter: pack=True is not supported; generated prefixes are "
          "per row, so examples cannot share a row. Use pack=False.")
    self.few_shot = few_shot
    task = ["inputs", "targets"]
    if few_shot != "none":
      task.insert(0, features_lib.HYPER_INPUTS)
    self.TASK_FEATURES = {k: _Spec(dtype=tf.int32) for k in task}
    model = list(_DECODER) + ([HYPER_INPUT_TOKENS] if few_shot == "hyper" else [])
    self.MODEL_FEATURES = {k: _Spec(dtype=tf.int32) for k in model}
    super().__init__(pack=False, bos_id=bos_id, **kwargs)

  def _concat(self, ex: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    prompt = ex["inputs"]
    if self.few_shot == "in_context":
      prompt = tf.concat([ex[features_lib.HYPER_INPUTS], prompt], axis=0)
    targets = ex["targets"]
    out = {
        "decoder_target_tokens": tf.concat([prompt, targets], axis=0),
        "decoder_loss_weights": tf.concat(
            [tf.zeros_like(prompt), tf.ones_like(targets)], axis=0),
    }
    if self.few_shot == "hyper":
      out[HYPER_INPUT_TOKENS] = ex[features_lib.HYPER_INPUTS]
    out.update({k: ex[k] for k in self._passthrough_features})
    return out

  def _shift(self, ex: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    ex = dict(ex)
    ex["decoder_input_tokens"] = seqio.utils.make_autoregressive_inputs(
        ex["decoder_target_tokens"], bos_id=self.bos_id)
    return ex

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    lengths = self.get_model_feature_lengths(task_feature_lengths)
    ds = ds.map(self._concat, num_parallel_calls=tf.data.AUTOTUNE)
    pad = {k: v for k, v in lengths.items() if k != "decoder_input_tokens"}
    ds = seqio.utils.trim_and_pad_dataset(ds, pad)
    return ds.map(self._shift, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    if self.few_shot == "in_context":
      length += task_feature_lengths[features_lib.HYPER_INPUTS]
    lengths = {k: length for k in _DECODER}
    if self.few_shot == "hyper":
      lengths[HYPER_INPUT_TOKENS] = task_feature_lengths[features_lib.HYPER_INPUTS]
    lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
    return lengths


def prompt_lengths(decoder_loss_weights: np.ndarray) -> np.ndarray:
  """Per row, how many decoder_input_tokens form the generation prompt (bos + the inputs):
  the index of the first target position + 1."""
  w = np.asarray(decoder_loss_weights) > 0
  if not w.any(axis=1).all():
    raise ValueError("prompt_lengths: a row has no target position (all loss weights 0); "
                     "every decoder-only example needs targets")
  return w.argmax(axis=1) + 1
