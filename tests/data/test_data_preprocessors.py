"""CACLM split, rank-classification expansion, trimming with counts."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from hypert5.data import features, get_vocabulary
from hypert5.data import preprocessors as prep

BYTES = get_vocabulary("byte")
OF = features.hyper_features(BYTES)


def _spans(lengths_and_seeds, sequence_length, seed=0):
  spans = [np.arange(2, 2 + n, dtype=np.int32) for n in lengths_and_seeds]
  ds = tf.data.Dataset.from_generator(lambda: ({"tokens": s} for s in spans),
                                      output_signature={"tokens": tf.TensorSpec([None], tf.int32)})
  with seqio.utils.map_seed_manager(seed):
    ds = prep.caclm_split(ds, sequence_length, OF)
  return spans, list(prep.trim_and_count(ds, sequence_length, OF).as_numpy_iterator())


def test_caclm_split_is_a_b_c_d_of_the_span():
  lengths = {"hyper_inputs": 1000, "inputs": 20, "targets": 10}
  spans, rows = _spans([4, 9, 30, 60, 200] * 4, lengths)
  for span, r in zip(spans, rows):
    hyper = r["hyper_inputs"][:-1]
    cut = int(np.flatnonzero(hyper == 1)[0])
    a, d = hyper[:cut], hyper[cut + 1:]
    b, c = r["inputs"][:-1], r["targets"][:-1]
    assert min(len(a), len(b), len(c), len(d)) >= 1  # three cuts, four non-empty parts
    np.testing.assert_array_equal(np.concatenate([a, b, c, d]), span)  # nothing lost
    assert r["hyper_inputs_truncated"] == 0
    assert len(b) <= 19 and len(c) <= 9


def test_caclm_cuts_are_random_and_seeded():
  lengths = {"hyper_inputs": 1000, "inputs": 50, "targets": 50}
  _, one = _spans([100] * 20, lengths, seed=1)
  _, same = _spans([100] * 20, lengths, seed=1)
  _, other = _spans([100] * 20, lengths, seed=2)
  cuts = lambda rows: [(len(r["inputs"]), len(r["targets"])) for r in rows]
  assert cuts(one) == cuts(same) != cuts(other)
  assert len(set(cuts(one))) > 10


def test_caclm_over_long_context_is_cut_far_from_b_and_c_and_counted():
  lengths = {"hyper_inputs": 12, "inputs": 8, "targets": 8}
  spans, rows = _spans([300] * 10, lengths)
  for span, r in zip(spans, rows):
    hyper = r["hyper_inputs"][:-1]
    cut = int(np.flatnonzero(hyper == 1)[0])
    a, d = hyper[:cut], hyper[cut + 1:]
    b = r["inputs"][:-1]
    assert len(hyper) <= 11
    assert a[-1] + 1 == b[0] and b[-1] + 1 == r["targets"][0]  # A ends where B starts
    assert d[0] == r["targets"][-2] + 1  # D starts right after C
    assert r["hyper_inputs_truncated"] == 300 - len(a) - len(b) - len(r["targets"][:-1]) - len(d)


def test_concat_and_chunk_joins_documents():
  docs = tf.data.Dataset.from_tensor_slices({"text": ["abc", "defgh", "ij", "klmnopq"]})
  out = list(prep.concat_and_chunk(docs, None, OF, span_length=5, min_span_length=2,
                                   docs_per_batch=4).as_numpy_iterator())
  assert [BYTES.decode(o["tokens"].tolist()) for o in out] == ["abcde", "fghij", "klmno", "pq"]


def test_rank_classification_expands_choices():
  ds = tf.data.Dataset.from_tensor_slices({
      "task_name": ["t", "t"], "inputs": ["q0", "q1"], "targets": ["b", " c "],
      "answer_choices": tf.ragged.constant([["a", "b"], ["a", "b", "c"]])}).map(
          lambda ex: {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v
                      for k, v in ex.items()})
  ds = ds.map(lambda ex: {**ex, "answer_choices": tf.reshape(ex["answer_choices"], [-1])})
  rows = list(prep.rank_classification(ds).as_numpy_iterator())
  assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
  assert [r["targets"].decode() for r in rows] == ["a", "b", "a", "b", "c"]
  assert [r["is_correct"] for r in rows] == [0, 1, 0, 0, 1]
  assert all(r["inputs"].decode() == f"q{r['idx'][0]}" for r in rows)


def test_rank_classification_without_a_correct_choice_fails():
  ds = tf.data.Dataset.from_tensors({"task_name": "t", "inputs": "q", "targets": "z",
                                     "answer_choices": tf.constant(["a", "b"])})
  with pytest.raises(tf.errors.InvalidArgumentError, match="no answer choice is correct"):
    list(prep.rank_classification(ds, source="file.json"))


def test_trim_and_count():
  ds = tf.data.Dataset.from_tensors({"inputs": tf.range(2, 12), "targets": tf.constant([5]),
                                     "hyper_inputs": tf.constant([7, 8])})
  ex = next(prep.trim_and_count(ds, {"inputs": 4, "targets": 4, "hyper_inputs": 8},
                                OF).as_numpy_iterator())
  assert ex["inputs"].tolist() == [2, 3, 4, 1] and ex["inputs_truncated"] == 7
  assert ex["targets"].tolist() == [5, 1] and ex["targets_truncated"] == 0
  assert ex["hyper_inputs"].tolist() == [7, 8, 1] and ex["hyper_inputs_truncated"] == 0
