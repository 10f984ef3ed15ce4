"""Few-shot assembly: choose K support examples per query and lay them out as tokens.

Two steps, so that where the support comes from and how it is written stay separate:

1. Support (text level), features `support_inputs` / `support_targets` ([K] strings):
   - `sample_support`: per query, K other examples of the same task (`task_name`) drawn
     from a pool of the task's first examples; never the query itself (no support example
     shares the query's input text); deterministic under seqio's preprocessing seed.
   - `fixed_support` / `select_support`: one K-shot set per task, chosen by a content hash
     and a seed, so it is identical across runs and hosts and its parameters are generated
     once; queries equal to a support example are dropped.
   A source may also yield the support features itself (S-NI's positive examples, the
   synthetic family); `sample_support` then leaves the example alone.
   With several queries per task (training only), `group_queries` first makes one row of Q
   queries of a task, so that they share one support set (none of them among it) and a
   hypermodel forward; `split_queries` lays each out as a row of its own and `join_queries`,
   after trimming, joins them back into `inputs` / `targets` of shape [Q, length].

2. Layout (token level), `format_few_shot`, with T5 sentinels as markers so the format
   reads the same under SentencePiece and byte vocabularies:

     [prefix] <extra_id_0> in_1 <extra_id_1> out_1 <extra_id_2> in_2 <extra_id_3> out_2 ...

   Example i is marked by sentinels 2i (before its input) and 2i+1 (before its output): the
   hypermodel has to be told which output belongs to which input. Into `inputs` (the
   in-context baseline) the query follows as `<extra_id_2n> query <extra_id_2n+1>`.
   Whole examples that do not fit are dropped (count in `fewshot_dropped`); only the prefix
   or the query itself are ever cut mid-sequence, and that is counted in `<feature>_truncated`.
"""
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from hypert5.data import support as support_lib
from hypert5.data.errors import DataError, where
from hypert5.data.features import HYPER_INPUTS
from hypert5.data.preprocessors import ANSWER_CHOICES
# Re-exported: choosing a fixed set is pure Python (support.py), used here and by tasks.
from hypert5.data.support import content_key, select_support, without_support  # noqa: F401

SUPPORT_INPUTS = "support_inputs"
SUPPORT_TARGETS = "support_targets"
HYPER_PREFIX = "hyper_prefix"
# Each example takes two sentinels, the in-context query two more; T5 has 100.
MAX_K = support_lib.MAX_K


def check_k(k: int, task: Optional[str] = None) -> int:
  if not 0 <= k <= MAX_K:
    raise ValueError(f"{where(task=task)}k={k}: few-shot k must be in [0, {MAX_K}] "
                     f"(two of the vocabulary's 100 sentinels mark each example).")
  return k


# ------------------------------------------------------------------ choosing support --


def fixed_support(dataset: tf.data.Dataset,
                  support: Callable[[], Sequence[Tuple[str, str]]],
                  prefix: Optional[str] = None) -> tf.data.Dataset:
  """Adds the same support set (from `support()`, e.g. `select_support`) to every query.

  `support` is called when the dataset is built, so registering a task reads no data.
  Queries whose input equals a support input are dropped.
  """
  pairs = tuple(support())
  inputs = tf.constant([p[0] for p in pairs], tf.string, shape=[len(pairs)])
  targets = tf.constant([p[1] for p in pairs], tf.string, shape=[len(pairs)])
  keys = tf.constant([content_key(p[0]) for p in pairs], tf.string, shape=[len(pairs)])

  def keep(ex):
    return tf.logical_not(tf.reduce_any(tf.equal(keys, tf.strings.strip(ex["inputs"]))))

  def add(ex):
    ex = dict(ex)
    ex[SUPPORT_INPUTS], ex[SUPPORT_TARGETS] = inputs, targets
    if prefix is not None:
      ex[HYPER_PREFIX] = tf.constant(prefix)
    return ex

  return dataset.filter(keep).map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _materialize_pool(dataset: tf.data.Dataset, pool_size: int):
  """The first `pool_size` (task_name, input, target) triples, as numpy object arrays."""
  def columns(ex):  # grouped rows (group_queries) hold [Q] queries: one pool entry each
    inputs = tf.reshape(ex["inputs"], [-1])
    return tf.fill(tf.shape(inputs), ex["task_name"]), inputs, tf.reshape(ex["targets"], [-1])

  cols = dataset.map(columns, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  cols = cols.take(pool_size).batch(4096)
  names, inputs, targets = [], [], []
  for n, i, t in cols.as_numpy_iterator():
    names.append(n), inputs.append(i), targets.append(t)
  if not names:
    return (np.zeros([0], object),) * 3
  return tuple(np.concatenate(c) for c in (names, inputs, targets))


def sample_support(dataset: tf.data.Dataset, *, k: int, pool_size: int = 1024,
                   source: Optional[str] = None) -> tf.data.Dataset:
  """Per query, K other examples of the same task from a pool of the task's first examples.

  The pool is read once when the dataset is built: the first `pool_size` examples of this
  dataset, de-duplicated by input text. A support example never has the query's input text
  (which covers the query itself and any duplicate of it). Seeds come from seqio's
  `map_over_dataset` seed manager: `task.get_dataset(seed=s)` is deterministic.

  Needs string features `task_name`, `inputs`, `targets`. No-op when the source already
  provides `support_inputs` (a fixed set) or k == 0. `source` names the data in errors.
  A row of Q queries (`group_queries`) gets one support set, none of its queries among it.
  """
  check_k(k)
  if SUPPORT_INPUTS in dataset.element_spec or k == 0:
    return dataset
  queries = queries_per_row(dataset)
  names, inputs, targets = _materialize_pool(dataset, pool_size)
  if len(names) == 0:
    raise DataError(f"{where(path=source)}the dataset is empty, so there is nothing to "
                    f"draw {k}-shot support from. Check the data path and split.")
  # De-duplicate by (task, input) keeping first occurrences, then group by task.
  seen, order = set(), []
  for i, (n, x) in enumerate(zip(names, inputs)):
    key = (n, content_key(x))
    if key not in seen:
      seen.add(key)
      order.append(i)
  order = np.array(sorted(order, key=lambda i: (names[i], i)), dtype=np.int64)
  names, inputs, targets = names[order], inputs[order], targets[order]
  task_names, starts, counts = np.unique(names, return_index=True, return_counts=True)
  for name, count in zip(task_names, counts):
    if count < k + queries:
      raise DataError(
          f"{where(path=source, task=name.decode())}only {count} distinct examples (in the "
          f"first {pool_size}); {k}-shot support needs at least {k + queries} (k others "
          f"besides the {queries} quer{'ies' if queries > 1 else 'y'} of a row). Lower k or "
          f"queries_per_task, raise pool_size, or add examples.")

  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(task_names), tf.range(len(task_names), dtype=tf.int64)), -1)
  starts, counts = tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)
  pool_inputs, pool_targets = tf.constant(inputs), tf.constant(targets)
  pool_keys = tf.strings.strip(pool_inputs)

  @seqio.map_over_dataset(num_seeds=1)
  def pick(ex, seed):
    group = table.lookup(ex["task_name"])
    check = tf.debugging.Assert(group >= 0, [
        f"{where(path=source)}no few-shot pool for task", ex["task_name"],
        f"(its examples come after the first {pool_size} of the dataset). Raise pool_size."])
    with tf.control_dependencies([check]):
      group = tf.identity(group)
    start, count = starts[group], counts[group]
    keys = pool_keys[start:start + count]
    scores = tf.random.stateless_uniform(tf.shape(keys), seed)
    query_keys = tf.reshape(tf.strings.strip(ex["inputs"]), [-1])
    is_query = tf.reduce_any(tf.equal(keys[:, None], query_keys[None, :]), axis=1)
    scores = tf.where(is_query, 2.0, scores)
    _, idx = tf.math.top_k(-scores, k)
    idx = idx + tf.cast(start, tf.int32)
    ex = dict(ex)
    ex[SUPPORT_INPUTS] = tf.gather(pool_inputs, idx)
    ex[SUPPORT_TARGETS] = tf.gather(pool_targets, idx)
    return ex

  return pick(dataset)


# ------------------------------------------------------ several queries per task --

PER_QUERY = ("inputs", "targets")


def check_queries_per_task(q: int, source: Optional[str] = None) -> int:
  if q < 1:
    raise ValueError(f"{where(path=source)}queries_per_task={q}: must be at least 1.")
  return q


def queries_per_row(dataset: tf.data.Dataset) -> int:
  """Q for rows of [Q] queries (`group_queries`), 1 for rows of one."""
  shape = dataset.element_spec["inputs"].shape
  return 1 if shape.rank == 0 else shape[0]


def group_queries(dataset: tf.data.Dataset, *, queries_per_task: int,
                  source: Optional[str] = None) -> tf.data.Dataset:
  """Rows of `queries_per_task` consecutive queries of one task (`task_name`): `inputs` and
  `targets` become [Q] strings, the other features are the first query's.

  So that Q queries share one support set and one hypermodel forward in training (more
  evidence on a task per forward). A window of a task left with fewer than Q queries at
  the end of the data is dropped. No-op for Q = 1 and for a source whose rows already
  hold Q queries. Support a source gives (a fixed K-shot set) is the first query's; none of
  the other queries may be among it. Before `sample_support`.
  """
  q = check_queries_per_task(queries_per_task, source)
  spec = dataset.element_spec
  if q == 1 or queries_per_row(dataset) == q:
    return dataset
  if spec["inputs"].shape.rank != 0:
    raise DataError(f"{where(path=source)}rows hold {queries_per_row(dataset)} queries, "
                    f"not the {q} asked for; register the task with its source's count.")
  if ANSWER_CHOICES in spec:
    raise DataError(f"{where(path=source)}multiple-choice rows (answer_choices) are scored "
                    "one per choice, for evaluation; register this split with "
                    "queries_per_task=1.")

  def key(ex):
    name = ex.get("task_name", tf.constant(""))
    return tf.strings.to_hash_bucket_fast(name, 1 << 62)

  grouped = dataset.group_by_window(
      key, lambda _, window: window.batch(q, drop_remainder=True), window_size=q)

  @tf.autograph.experimental.do_not_convert
  def first(ex):
    out = {k: v if k in PER_QUERY else v[0] for k, v in ex.items()}
    if SUPPORT_INPUTS in out:
      in_support = tf.equal(tf.strings.strip(out["inputs"])[:, None],
                            tf.strings.strip(out[SUPPORT_INPUTS])[None, :])
      check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(in_support)), [
          f"{where(path=source)}task", out.get("task_name", "?"), ": a query is among "
          "the support its source gave another query; a source giving each query its "
          "own support must group its queries itself (see tasks/synthetic.py)."])
      with tf.control_dependencies([check]):
        out["inputs"] = tf.identity(out["inputs"])
    return out

  return grouped.map(first, num_parallel_calls=tf.data.AUTOTUNE)


def split_queries(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """A row of Q queries -> Q rows of one, in order, each with the row's other features
  (its support): tokenizing and layout then run per query as for any row."""
  q = queries_per_row(dataset)
  if q == 1:
    return dataset

  def rows(ex):
    return tf.data.Dataset.from_tensor_slices(
        {k: v if k in PER_QUERY else tf.repeat(v[tf.newaxis], q, axis=0)
         for k, v in ex.items()})

  return dataset.flat_map(rows)


def join_queries(dataset: tf.data.Dataset, *, queries_per_task: int,
                 source: Optional[str] = None) -> tf.data.Dataset:
  """The Q rows `split_queries` made, after trimming, back into one: `inputs` / `targets`
  [Q, longest] (padded with 0), `<feature>_truncated` of those summed, the rest the first
  row's. Their hyper_inputs are checked to be one (the rows are consecutive and nothing
  between the two steps adds or drops rows). No-op for Q = 1."""
  q = queries_per_task
  if q == 1:
    return dataset
  summed = tuple(f"{k}_truncated" for k in PER_QUERY)

  @tf.autograph.experimental.do_not_convert
  def join(ex):
    hyper = ex[HYPER_INPUTS]
    check = tf.debugging.assert_equal(
        hyper, tf.broadcast_to(hyper[:1], tf.shape(hyper)),
        message=f"{where(path=source)}queries joined into one row have different hyper "
                "inputs: a step between split_queries and join_queries added or dropped rows")
    with tf.control_dependencies([check]):
      out = {k: tf.identity(v) if k in PER_QUERY else v[0] for k, v in ex.items()}
    out.update({k: tf.reduce_sum(ex[k]) for k in summed if k in ex})
    return out

  return dataset.padded_batch(q, drop_remainder=True).map(
      join, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------- layout --


def encode_batch(vocabulary: seqio.Vocabulary, strings: tf.Tensor) -> tf.RaggedTensor:
  """Tokenizes a [N] string tensor to a [N, None] ragged tensor (any seqio vocabulary)."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    chars = tf.strings.bytes_split(strings)  # one byte per element, as in ByteVocabulary
    ids = tf.io.decode_raw(chars.flat_values, tf.uint8)[:, 0]
    return chars.with_flat_values(tf.cast(ids, tf.int32) + 3)
  ids = vocabulary.encode_tf(strings)
  if not isinstance(ids, tf.RaggedTensor):
    ids = tf.RaggedTensor.from_tensor(ids[tf.newaxis] if ids.shape.rank == 1 else ids)
  return tf.cast(ids, tf.int32)


def layout(prefix: tf.Tensor, segments: tf.RaggedTensor, query: Optional[tf.Tensor],
           budget: Optional[int], vocab_size: int):
  """Token layout of one example; returns (tokens, kept, dropped, truncated).

  `segments` holds [in_1, out_1, in_2, out_2, ...] ([2K, None] tokens). Priority when over
  `budget`: the query (cut last), then the prefix, then whole examples in order; only the
  query and prefix are ever cut mid-sequence (`truncated` counts those tokens).
  """
  big = tf.int64.max // 4
  budget_t = tf.constant(big if budget is None else budget, tf.int64)
  truncated = tf.constant(0, tf.int64)
  if query is not None:
    q_len = tf.size(query, out_type=tf.int64)
    q_keep = tf.maximum(tf.minimum(q_len, budget_t - 2), 0)
    truncated += q_len - q_keep
    query = query[:q_keep]
    budget_t -= q_keep + 2
  p_len = tf.size(prefix, out_type=tf.int64)
  p_keep = tf.maximum(tf.minimum(p_len, budget_t), 0)
  truncated += p_len - p_keep
  budget_t -= p_keep

  # Each segment s gets sentinel s in front: one dynamic_stitch instead of ragged concats
  # (tf.data pays per op, and this runs once per example).
  lengths = segments.row_lengths()
  starts = tf.math.cumsum(lengths + 1, exclusive=True)
  num_segments = tf.shape(lengths, out_type=tf.int64)[0]
  seg_ids = segments.value_rowids()
  flat = tf.dynamic_stitch(
      [tf.cast(starts, tf.int32),
       tf.cast(tf.range(tf.size(seg_ids, out_type=tf.int64)) + seg_ids + 1, tf.int32)],
      [vocab_size - 1 - tf.range(tf.cast(num_segments, tf.int32)), segments.flat_values])
  example_lengths = tf.reduce_sum(tf.reshape(lengths + 1, [-1, 2]), axis=1)
  ends = tf.math.cumsum(example_lengths)
  kept = tf.reduce_sum(tf.cast(ends <= budget_t, tf.int64))
  end = tf.concat([[0], ends], 0)[kept]
  parts = [prefix[:p_keep], flat[:end]]
  if query is not None:
    n = tf.cast(kept, tf.int32)
    parts += [[vocab_size - 1 - 2 * n], query, [vocab_size - 2 - 2 * n]]
  return tf.concat(parts, axis=0), kept, num_segments // 2 - kept, truncated


def format_few_shot(dataset: tf.data.Dataset, sequence_length, output_features, *,
                    into: str = "hyper_inputs",
                    prefix_feature: str = HYPER_PREFIX,
                    with_support: bool = True) -> tf.data.Dataset:
  """Writes prefix + support examples (+ the query, when `into="inputs"`) as tokens.

  Runs after `seqio.preprocessors.tokenize` (it reads the tokenized `inputs` when writing
  into them) and before `preprocessors.trim_and_count`, leaving room for its EOS.
  Adds int32 counters `fewshot_kept`, `fewshot_dropped` and `<into>_truncated`.
  A missing prefix feature means no prefix; missing support features (or
  `with_support=False`, as for the description-only oracle) mean zero examples.
  """
  vocabulary = output_features[into].vocabulary
  vocab_size = vocabulary.vocab_size
  max_k = min(MAX_K, (vocabulary.extra_ids - (2 if into == "inputs" else 0)) // 2)
  length = (sequence_length or {}).get(into)
  budget = None if length is None else length - int(output_features[into].add_eos)
  has_prefix = prefix_feature in dataset.element_spec
  has_support = with_support and SUPPORT_INPUTS in dataset.element_spec

  static_k = dataset.element_spec[SUPPORT_INPUTS].shape[0] if has_support else 0
  too_many = (f"support examples per query exceed the {max_k} that the vocabulary's "
              f"{vocabulary.extra_ids} sentinels can mark; lower k.")
  if static_k is not None and static_k > max_k:
    raise ValueError(f"{static_k} {too_many}")

  @tf.autograph.experimental.do_not_convert
  def fn(ex):
    ex = dict(ex)
    prefix = (encode_batch(vocabulary, ex[prefix_feature][None]).flat_values
              if has_prefix else tf.zeros([0], tf.int32))
    if has_support:  # [in_1, out_1, in_2, out_2, ...], encoded in one call
      texts = tf.reshape(tf.stack([ex[SUPPORT_INPUTS], ex[SUPPORT_TARGETS]], axis=1), [-1])
      if static_k is None:  # a marker past the sentinels would be an ordinary token
        with tf.control_dependencies([tf.debugging.assert_less_equal(
            tf.size(texts), 2 * max_k, message=too_many)]):
          texts = tf.identity(texts)
      segments = encode_batch(vocabulary, texts)
    else:
      segments = tf.RaggedTensor.from_row_lengths(
          tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    query = tf.cast(ex["inputs"], tf.int32) if into == "inputs" else None
    tokens, kept, dropped, truncated = layout(prefix, segments, query, budget, vocab_size)
    ex[into] = tokens
    ex["fewshot_kept"] = tf.cast(kept, tf.int32)
    ex["fewshot_dropped"] = tf.cast(dropped, tf.int32)
    ex[f"{into}_truncated"] = tf.cast(truncated, tf.int32)
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def task_hyper_inputs(task: str, sequence_length, split: str = "validation") -> np.ndarray:
  """The padded hyper tokens every query of a fixed-support task shares, for an evaluator
  that generates the task's parameters once. Raises if the task's queries differ (a task
  whose support is sampled per query has no single set)."""
  provider = seqio.get_mixture_or_task(task)
  ds = provider.get_dataset(sequence_length, split=split, shuffle=False)
  rows = [ex["hyper_inputs"] for ex in ds.take(8).as_numpy_iterator()]
  if not rows:
    raise DataError(f"{where(task=task)}split {split!r} is empty.")
  if any(not np.array_equal(rows[0], r) for r in rows[1:]):
    raise ValueError(f"task {task}: queries of split {split!r} have different hyper inputs; "
                     "its support is sampled per query, not one fixed K-shot set.")
  length = sequence_length["hyper_inputs"]
  return np.pad(rows[0], (0, length - len(rows[0]))).astype(np.int32)


def encode_few_shot(vocabulary: seqio.Vocabulary, examples: Sequence[Tuple[str, str]],
                    length: int, prefix: str = "") -> Tuple[np.ndarray, int]:
  """hyper_inputs tokens for (input, output) examples outside any task, laid out exactly as
  the tasks do (prefix, sentinel-marked whole examples, EOS), padded to `length`.

  Returns (tokens [length] int32, number of examples that fit). For exporting parameters
  for a new task from a file of examples.
  """
  texts = tf.constant([str(t) for pair in examples for t in pair], tf.string,
                      shape=[2 * len(examples)])
  prefix_ids = (encode_batch(vocabulary, tf.constant([prefix])).flat_values if prefix
                else tf.zeros([0], tf.int32))
  tokens, kept, _, _ = layout(prefix_ids, encode_batch(vocabulary, texts), None, length - 1,
                              vocabulary.vocab_size)
  ids = np.concatenate([tokens.numpy(), [vocabulary.eos_id]]).astype(np.int32)
  return np.pad(ids, (0, length - len(ids))), int(kept)


def split_oracle(tokens: np.ndarray, vocab_size: int, description_len: int,
                 query_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """Oracle-layout inputs `description <m> query <m> EOS` (`layout` with the description as
  prefix and no examples) -> (description [b, description_len], query + EOS [b, query_len]),
  the query laid out as plain and hyper tasks lay it out. `vocab_size` is the vocabulary's
  size: the markers are the sentinels counted down from its top. A description longer than
  `description_len` is a DataError (a reader must see all of it); a query longer than
  `query_len` - 1 is cut, as plain tasks trim it. For training mode `peft_friendly`
  (hypert5.training.modes)."""
  desc = np.zeros((len(tokens), description_len), np.int32)
  query = np.zeros((len(tokens), query_len), np.int32)
  for i, row in enumerate(tokens):
    marks = np.flatnonzero((row == vocab_size - 1) | (row == vocab_size - 2))
    if len(marks) < 2:
      raise DataError(f"oracle row {i} lacks the `description <m> query <m>` layout of an "
                      f"oracle-mode task (markers {vocab_size - 1}, {vocab_size - 2}): "
                      f"{row.tolist()}; train mode peft_friendly on an *_oracle_* mixture")
    if marks[0] > description_len:
      raise DataError(f"oracle row {i}: its description has {marks[0]} tokens, more than the "
                      f"{description_len} its readers take; raise experiment.description_length "
                      "(or leave it unset: the inputs' length)")
    d = row[:marks[0]]
    q = list(row[marks[0] + 1:marks[1]][:query_len - 1]) + [1]
    desc[i, :len(d)], query[i, :len(q)] = d, q
  return desc, query
