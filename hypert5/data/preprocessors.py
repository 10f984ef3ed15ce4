"""seqio preprocessors: CACLM hyperpretraining split, rank classification, trim with counts.

Few-shot support and layout live in `fewshot.py`.
"""
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from hypert5.data import features as features_lib
from hypert5.data.errors import where

# --------------------------------------------------------------------- trimming --


def trim_and_count(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
  """Trims each output feature to its length (leaving room for EOS), appends EOS, and counts.

  Replaces `seqio.preprocessors.append_eos_after_trim`: the same result, plus an int32
  `<feature>_truncated` per feature with the number of tokens cut (added to a count an
  earlier step may have made), so over-long examples are counted, not silently cut.
  """
  lengths = sequence_length or {}
  keys = [k for k in output_features if k in dataset.element_spec]

  @tf.autograph.experimental.do_not_convert
  def fn(ex):
    ex = dict(ex)
    for k in keys:
      feat = output_features[k]
      value = ex[k]
      count = tf.cast(ex.get(f"{k}_truncated", 0), tf.int32)
      if lengths.get(k) is not None:
        keep = lengths[k] - int(feat.add_eos)
        count += tf.maximum(tf.size(value) - keep, 0)
        value = value[:keep]
      if feat.add_eos:
        value = tf.concat([value, [tf.cast(feat.vocabulary.eos_id, value.dtype)]], axis=0)
      ex[k] = value
      ex[f"{k}_truncated"] = count
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------- CACLM --


def default_span_length(sequence_length: Optional[Mapping[str, int]]) -> int:
  """4·S for CACLM when not given: on average A+D fill the hypermodel's input.

  B and C are drawn uniformly up to their budgets, so the span is the hyper budget plus
  the mean B and C lengths: 1024/512/128 gives 1340 tokens (S = 335).
  """
  if not sequence_length:
    return 2048
  return ((sequence_length[features_lib.HYPER_INPUTS] - 2)
          + (sequence_length["inputs"] - 1) // 2 + (sequence_length["targets"] - 1) // 2)


def concat_and_chunk(dataset: tf.data.Dataset, sequence_length, output_features, *,
                     text_key: str = "text", span_length: Optional[int] = None,
                     docs_per_batch: int = 64, min_span_length: int = 8) -> tf.data.Dataset:
  """Documents -> token spans of `span_length` (4·S), concatenated across documents.

  As T5's `reduce_concat_tokens` + `split_tokens`: `docs_per_batch` tokenized documents are
  joined and cut into spans, so short documents (most of C4) still make full spans. Spans
  shorter than `min_span_length` (the tail of a batch) are dropped. Yields `{"tokens"}`.
  """
  vocabulary = output_features["targets"].vocabulary
  span = span_length or default_span_length(sequence_length)
  if span < 4:
    raise ValueError(f"span_length={span}: CACLM needs at least 4 tokens per span.")

  def tokenize(ex):
    return tf.cast(tf.reshape(vocabulary.encode_tf(ex[text_key]), [-1]), tf.int32)

  def chunk(docs):
    flat = docs.flat_values
    n = tf.size(flat)
    num = (n + span - 1) // span
    lengths = tf.minimum(span, n - span * tf.range(num))
    return tf.data.Dataset.from_tensor_slices(
        {"tokens": tf.RaggedTensor.from_row_lengths(flat, lengths)})

  ds = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(docs_per_batch)
  ds = ds.flat_map(chunk)
  return ds.filter(lambda ex: tf.size(ex["tokens"]) >= min_span_length)


def _uniform_int(seed, lo, hi):
  """Uniform integer in [lo, hi] (inclusive), stateless."""
  return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


def caclm_split(dataset: tf.data.Dataset, sequence_length, output_features) -> tf.data.Dataset:
  """Cuts each span of `tokens` at three random points into A|B|C|D (all non-empty).

  hyper_inputs = A <eos> D, inputs = B, targets = C: the hypermodel sees the context on
  both sides, the downstream model continues B into C. B and C are drawn uniformly up to
  their length budgets, so they are never cut; if A and D together exceed the hypermodel's
  budget, A loses tokens at its start and D at its end (the parts far from B and C), and
  `hyper_inputs_truncated` counts them. Seeds come from seqio's seed manager.
  """
  eos = output_features["targets"].vocabulary.eos_id
  lengths = sequence_length or {}
  big = 1 << 30

  def budget(key):
    return big if lengths.get(key) is None else lengths[key] - 1

  b_max, c_max = budget("inputs"), budget("targets")
  ad_max = budget(features_lib.HYPER_INPUTS) - 1  # less the eos between A and D
  if min(b_max, c_max) < 1 or ad_max < 2:
    raise ValueError(f"sequence_length={dict(lengths)} is too short for CACLM: inputs and "
                     "targets need 2 tokens, hyper_inputs 4.")

  @seqio.map_over_dataset(num_seeds=1)
  def split(ex, seed):
    tokens = tf.cast(ex["tokens"], tf.int32)
    n = tf.size(tokens)
    s_b, s_c, s_a = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    len_b = _uniform_int(s_b, 1, tf.minimum(b_max, n - 3))
    len_c = _uniform_int(s_c, 1, tf.minimum(c_max, n - len_b - 2))
    rest = n - len_b - len_c
    len_a = _uniform_int(s_a, 1, rest - 1)
    len_d = rest - len_a
    a_keep = tf.minimum(len_a, tf.maximum(ad_max - len_d, ad_max // 2))
    d_keep = tf.minimum(len_d, ad_max - a_keep)
    a = tokens[len_a - a_keep:len_a]
    d = tokens[len_a + len_b + len_c:][:d_keep]
    return {
        features_lib.HYPER_INPUTS: tf.concat([a, [eos], d], axis=0),
        "inputs": tokens[len_a:len_a + len_b],
        "targets": tokens[len_a + len_b:len_a + len_b + len_c],
        f"{features_lib.HYPER_INPUTS}_truncated": (len_a - a_keep) + (len_d - d_keep),
    }

  return split(dataset.filter(lambda ex: tf.size(ex["tokens"]) >= 4))


# ----------------------------------------------------------- rank classification --

ANSWER_CHOICES = "answer_choices"


def rank_classification(dataset: tf.data.Dataset, *, source: Optional[str] = None,
                        choices_feature: str = ANSWER_CHOICES) -> tf.data.Dataset:
  """One scored row per answer choice, for multiple-choice evaluation.

  Each example with `answer_choices` ([n] strings) becomes n rows: `targets` = the choice,
  `idx` = [example index, choice index], `is_correct` (int32) from `choice_is_correct` if
  present, else whether the choice equals `targets` (stripped). Other features repeat.
  Examples are numbered in dataset order, so evaluate unshuffled. No-op without choices.
  """
  if choices_feature not in dataset.element_spec:
    return dataset
  consumed = (choices_feature, "targets", "choice_is_correct")

  def expand(i, ex):
    choices = ex[choices_feature]
    n = tf.size(choices)
    if "choice_is_correct" in ex:
      correct = tf.cast(ex["choice_is_correct"], tf.bool)
    else:
      correct = tf.equal(tf.strings.strip(choices), tf.strings.strip(ex["targets"]))
    check = tf.debugging.Assert(tf.reduce_any(correct), [
        f"{where(path=source)}task", ex.get("task_name", "?"),
        ": no answer choice is correct (none equals the target", ex.get("targets", ""),
        "); fix the example's answer choices or its target."], summarize=8)
    with tf.control_dependencies([check]):
      rows = {k: tf.repeat(v[tf.newaxis], n, axis=0)
              for k, v in ex.items() if k not in consumed}
      rows["targets"] = tf.identity(choices)
    rows["idx"] = tf.stack([tf.fill([n], tf.cast(i, tf.int32)), tf.range(n)], axis=1)
    rows["is_correct"] = tf.cast(correct, tf.int32)
    return tf.data.Dataset.from_tensor_slices(rows)

  return dataset.enumerate().flat_map(expand)
