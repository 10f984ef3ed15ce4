"""Several queries per task: rows of Q queries of one task sharing one support set.

Grouping (`fewshot.group_queries`), support for a group (`sample_support`), the round trip
through per-query tokenizing (`split_queries` / `join_queries`), the converter's [Q, length]
features, and the registry's count per task or mixture.
"""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from hypert5.data import DataError, converters, fewshot, get_vocabulary, pipelines, registry
from hypert5.data import sources

BYTES = get_vocabulary("byte")
LENGTHS = {"hyper_inputs": 64, "inputs": 8, "targets": 8}


def _rows(tasks, per_task):
  """Interleaved rows of several tasks: task t's i-th example is (t + i, T + i)."""
  return [{"task_name": t, "inputs": f"{t}{i}", "targets": f"{t.upper()}{i}"}
          for i in range(per_task) for t in tasks]


def _text_ds(rows):
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([r[k] for r in rows]) for k in rows[0]})


def _text(ids):
  return bytes(int(i) - 3 for i in ids if 2 < i < 259).decode()


def test_group_queries_makes_rows_of_one_task_and_drops_partial_windows():
  grouped = fewshot.group_queries(_text_ds(_rows("ab", 10)), queries_per_task=4)
  rows = list(grouped.as_numpy_iterator())
  # 10 examples per task: two rows of 4 each; the 2 left over per task are dropped.
  assert sorted(r["task_name"].decode() for r in rows) == ["a", "a", "b", "b"]
  for r in rows:
    t = r["task_name"].decode()
    assert r["inputs"].shape == (4,)
    assert all(x.decode().startswith(t) for x in r["inputs"])
    assert [x.decode() for x in r["targets"]] == [x.decode().upper() for x in r["inputs"]]
  assert fewshot.queries_per_row(grouped) == 4
  assert fewshot.group_queries(grouped, queries_per_task=4) is grouped  # already grouped
  with pytest.raises(DataError, match="rows hold 4 queries, not the 2"):
    fewshot.group_queries(grouped, queries_per_task=2)
  with pytest.raises(ValueError, match="toy: queries_per_task=0: must be at least 1"):
    pipelines.preprocessors("hyper", k=2, source="toy", queries_per_task=0)


def test_one_sampled_support_set_per_row_with_none_of_its_queries():
  grouped = fewshot.group_queries(_text_ds(_rows("ab", 12)), queries_per_task=4)
  with_support = fewshot.sample_support(grouped, k=5, source="toy")
  for r in with_support.as_numpy_iterator():
    t = r["task_name"].decode()
    support, queries = set(r["support_inputs"]), set(r["inputs"])
    assert len(support) == 5 and not support & queries
    assert all(x.decode().startswith(t) for x in support)
  # A task needs k others besides the Q queries of a row: 12 examples hold 4 + 8, not 4 + 9.
  with pytest.raises(DataError, match="needs at least 13"):
    fewshot.sample_support(grouped, k=9, source="toy")


def test_source_given_support_may_not_hold_another_query():
  rows = [{"task_name": "a", "inputs": f"a{i}", "targets": f"A{i}",
           "support_inputs": ["a1", "a9"], "support_targets": ["A1", "A9"]} for i in range(4)]
  grouped = fewshot.group_queries(_text_ds(rows), queries_per_task=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="must group its queries itself"):
    list(grouped.as_numpy_iterator())  # a1 is a query of the first row and in its support


def test_join_queries_refuses_rows_of_different_hyper_inputs():
  rows = tf.data.Dataset.from_tensor_slices({
      "hyper_inputs": tf.constant([[5, 6], [5, 6], [5, 7], [5, 7]]),
      "inputs": tf.constant([[1, 1], [2, 1], [3, 1], [4, 1]])})
  joined = fewshot.join_queries(rows, queries_per_task=2)
  assert [r["inputs"].tolist() for r in joined.as_numpy_iterator()] == [[[1, 1], [2, 1]],
                                                                        [[3, 1], [4, 1]]]
  shifted = fewshot.join_queries(rows.skip(1), queries_per_task=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="different hyper inputs"):
    list(shifted.as_numpy_iterator())


@pytest.fixture
def grouped_task():
  names = pipelines.register(
      "qpt", "toy", sources.RowsSource(lambda split: _rows("ab", 12), splits=("train",)),
      kind=pipelines.GENERATIVE, vocabulary=BYTES, k=3, modes=("hyper", "plain"),
      queries_per_task=4)
  yield names
  for name in names.values():
    seqio.TaskRegistry.remove(name)


def test_a_registered_task_yields_rows_of_q_queries_sharing_their_hyper_input(grouped_task):
  task = seqio.get_mixture_or_task(grouped_task["hyper"])
  assert registry.queries_per_task(task) == 4
  assert registry.queries_per_task(grouped_task["plain"]) == 1  # baselines: one per row
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, trim_output_features=False)
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 6  # 24 examples, 4 per row
  for r in rows:
    t = r["task_name"].decode()
    queries = [_text(q) for q in r["inputs"]]
    assert r["inputs"].shape[0] == 4 and all(q.startswith(t) for q in queries)
    assert [_text(x) for x in r["targets"]] == [q.upper() for q in queries]
    assert all(q[q > 0][-1] == 1 for q in r["inputs"])  # each query ends in EOS
    # The hyper input is the layout of the row's support, none of it a query of the row.
    support = list(zip(r["support_inputs"].astype(str), r["support_targets"].astype(str)))
    expected, kept = fewshot.encode_few_shot(BYTES, support, len(r["hyper_inputs"]))
    np.testing.assert_array_equal(r["hyper_inputs"], expected)
    assert kept == 3 and not {x for x, _ in support} & set(queries)

  converter = converters.converter_for(task)
  batch = next(seqio.get_dataset(task, LENGTHS, converter, dataset_split="train",
                                 shuffle=False, batch_size=2,
                                 trim_output_features=False).as_numpy_iterator())
  assert batch["hyper_encoder_input_tokens"].shape == (2, 64)
  assert batch["encoder_input_tokens"].shape == (2, 4, 8)
  targets = batch["decoder_target_tokens"]
  assert targets.shape == (2, 4, 8)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][..., 1:], targets[..., :-1])
  assert (batch["decoder_input_tokens"][..., 0] == 0).all()
  np.testing.assert_array_equal(batch["decoder_loss_weights"], targets > 0)
  # seqio's own trim cuts the first axis (the queries): refused, not silently applied.
  with pytest.raises(ValueError, match="trim_output_features=False"):
    seqio.get_dataset(task, {**LENGTHS, "inputs": 3}, converter, dataset_split="train",
                      shuffle=False)


def test_a_mixture_needs_one_count_for_all_its_tasks(grouped_task):
  names = pipelines.register(
      "qpt", "other", sources.RowsSource(lambda split: _rows("c", 12), splits=("train",)),
      kind=pipelines.GENERATIVE, vocabulary=BYTES, k=3)
  try:
    registry.add_mixture("qpt_mixed", [grouped_task["hyper"], names["hyper"]])
    with pytest.raises(ValueError, match="one queries_per_task"):
      registry.queries_per_task("qpt_mixed")
  finally:
    seqio.MixtureRegistry.remove("qpt_mixed")
    seqio.TaskRegistry.remove(names["hyper"])


def test_a_grouped_task_registered_past_the_registry_is_named():
  name = "qpt_unrecorded"
  seqio.TaskRegistry.add(
      name, source=sources.RowsSource(lambda split: _rows("a", 8), splits=("train",)),
      output_features=pipelines.output_features("hyper", BYTES, queries_per_task=2),
      preprocessors=pipelines.preprocessors("hyper", k=2, queries_per_task=2))
  try:
    with pytest.raises(ValueError, match=f"task {name}: .* queries_per_task=Q"):
      converters.converter_for(name)
  finally:
    seqio.TaskRegistry.remove(name)
