"""Few-shot support (sampled, fixed) and its token layout."""
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from hypert5.data import DataError, fewshot, features, get_vocabulary
from hypert5.data import preprocessors as prep

BYTES = get_vocabulary("byte")
V = BYTES.vocab_size


def s(i):  # <extra_id_i>
  return V - 1 - i


def _text_ds(rows):
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([r[k] for r in rows]) for k in rows[0]})


# ----------------------------------------------------------------- layout --


def test_layout_marks_every_example_and_keeps_whole_examples():
  segments = tf.ragged.constant([[10, 11], [20], [12], [21, 22], [13], [23]], tf.int32)
  tokens, kept, dropped, truncated = fewshot.layout(
      tf.constant([7, 8], tf.int32), segments, None, budget=None, vocab_size=V)
  assert tokens.numpy().tolist() == [7, 8, s(0), 10, 11, s(1), 20, s(2), 12, s(3), 21, 22,
                                     s(4), 13, s(5), 23]
  assert (int(kept), int(dropped), int(truncated)) == (3, 0, 0)
  # 2 + 5 + 5 = 12 fits in 12; the third example (4 more) is dropped whole.
  tokens, kept, dropped, truncated = fewshot.layout(
      tf.constant([7, 8], tf.int32), segments, None, budget=13, vocab_size=V)
  assert tokens.numpy().tolist() == [7, 8, s(0), 10, 11, s(1), 20, s(2), 12, s(3), 21, 22]
  assert (int(kept), int(dropped), int(truncated)) == (2, 1, 0)


def test_layout_in_context_query_and_counted_cuts():
  segments = tf.ragged.constant([[10], [20]], tf.int32)
  query = tf.constant([30, 31, 32], tf.int32)
  tokens, kept, _, truncated = fewshot.layout(
      tf.zeros([0], tf.int32), segments, query, budget=None, vocab_size=V)
  assert tokens.numpy().tolist() == [s(0), 10, s(1), 20, s(2), 30, 31, 32, s(3)]
  assert int(kept) == 1 and int(truncated) == 0
  # Budget 4: the query alone does not fit; it is cut (and counted), no examples.
  tokens, kept, dropped, truncated = fewshot.layout(
      tf.constant([7, 8], tf.int32), segments, query, budget=4, vocab_size=V)
  assert tokens.numpy().tolist() == [s(0), 30, 31, s(1)]
  assert (int(kept), int(dropped), int(truncated)) == (0, 1, 1 + 2)  # query 1, prefix 2


def test_format_few_shot_on_a_dataset():
  ds = _text_ds([{"inputs": "hi", "targets": "yo", "hyper_prefix": "P:",
                  "support_inputs": ["ab", "cd"], "support_targets": ["x", "y"]}])
  of = features.hyper_features(BYTES)
  ds = seqio.preprocessors.tokenize(ds, of)
  ds = fewshot.format_few_shot(ds, {"hyper_inputs": 16, "inputs": 8, "targets": 8}, of)
  ex = next(prep.trim_and_count(ds, {"hyper_inputs": 16, "inputs": 8, "targets": 8},
                                of).as_numpy_iterator())
  assert ex["hyper_inputs"].tolist() == (BYTES.encode("P:") + [s(0)] + BYTES.encode("ab")
                                         + [s(1)] + BYTES.encode("x") + [s(2)]
                                         + BYTES.encode("cd") + [s(3)] + BYTES.encode("y")
                                         + [1])
  assert ex["inputs"].tolist() == BYTES.encode("hi") + [1]
  assert (ex["fewshot_kept"], ex["fewshot_dropped"], ex["hyper_inputs_truncated"]) == (2, 0, 0)


def test_format_few_shot_with_sentencepiece(tmp_path):
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/t5_spiece.model"
  if not path.exists():
    pytest.skip("no shared data")
  v = get_vocabulary(str(path))
  of = features.hyper_features(v)
  ds = _text_ds([{"inputs": "a query", "targets": "t", "support_inputs": ["one", "two"],
                  "support_targets": ["uno", "dos"]}])
  ds = fewshot.format_few_shot(seqio.preprocessors.tokenize(ds, of), None, of)
  ex = next(ds.as_numpy_iterator())
  assert v.decode(ex["hyper_inputs"].tolist()) == (
      "<extra_id_0> one <extra_id_1> uno <extra_id_2> two <extra_id_3> dos")


# -------------------------------------------------------- sampled support --


def _pool(rng, num_tasks=4, per_task=8, duplicates=3):
  rows = []
  for t in range(num_tasks):
    for i in range(per_task):
      rows.append({"task_name": f"t{t}", "inputs": f"t{t} q{i}", "targets": f"a{i}"})
  for _ in range(duplicates):  # exact duplicates of some query: still never its own support
    rows.append(dict(rows[rng.integers(len(rows))]))
  order = rng.permutation(len(rows))
  return [rows[i] for i in order]


def _sample(rows, k, seed, pool_size=1024):
  with seqio.utils.map_seed_manager(seed):
    ds = fewshot.sample_support(_text_ds(rows), k=k, pool_size=pool_size, source="fixture")
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("seed", range(6))
def test_no_query_is_ever_in_its_own_support(seed):
  rng = np.random.default_rng(seed)
  rows = _pool(rng, num_tasks=int(rng.integers(1, 5)), per_task=int(rng.integers(4, 9)))
  k = 3
  out = _sample(rows, k, seed)
  assert len(out) == len(rows)
  for ex in out:
    support = [x.decode() for x in ex["support_inputs"]]
    assert ex["inputs"].decode() not in support
    assert len(set(support)) == k  # K distinct examples
    assert all(x.startswith(ex["task_name"].decode() + " ") for x in support)  # same task
    for x, y in zip(support, ex["support_targets"]):
      assert y.decode() == "a" + x.split(" q")[1]  # pairs stay pairs


def test_sampling_is_deterministic_under_a_seed():
  rows = _pool(np.random.default_rng(0))
  first = [tuple(ex["support_inputs"]) for ex in _sample(rows, 2, seed=11)]
  assert first == [tuple(ex["support_inputs"]) for ex in _sample(rows, 2, seed=11)]
  assert first != [tuple(ex["support_inputs"]) for ex in _sample(rows, 2, seed=12)]


def test_a_task_with_too_few_examples_is_named():
  rows = [{"task_name": "small", "inputs": f"q{i}", "targets": "a"} for i in range(3)]
  with pytest.raises(DataError, match=r"fixture: task small: only 3 distinct examples.*3-shot "
                     r"support needs at least 4"):
    _sample(rows, 3, seed=0)
  with pytest.raises(DataError, match=r"fixture: the dataset is empty"):
    _sample(rows, 3, seed=0, pool_size=0)


def test_source_given_support_wins():
  rows = [{"task_name": "t", "inputs": "q", "targets": "a", "support_inputs": ["x"],
           "support_targets": ["y"]}]
  ds = _text_ds(rows)
  assert fewshot.sample_support(ds, k=3) is ds


# ---------------------------------------------------------- fixed support --

# A second "host": a fresh process that loads only the pure-Python support module (the
# package __init__s would import TensorFlow and JAX, seconds for nothing).
_SUPPORT_SCRIPT = """
import importlib.util, json, sys, types
def load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = sys.modules[name] = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
for pkg in ("hypert5", "hypert5.data"):
  sys.modules[pkg] = types.ModuleType(pkg)
load("hypert5.data.errors", sys.argv[1] + "/errors.py")
support = load("hypert5.data.support", sys.argv[1] + "/support.py")
pairs = [(f"in {i}", f"out {i}") for i in range(50)][::-1]
print(json.dumps(support.select_support(pairs, 4, seed=9, task="task")))
"""


def test_fixed_support_is_identical_across_processes_and_orders():
  """Another process (another "host") with another hash seed and example order agrees."""
  pairs = [(f"in {i}", f"out {i}") for i in range(50)]
  ours = fewshot.select_support(pairs, 4, seed=9, task="task")
  assert ours == fewshot.select_support(pairs[::-1], 4, seed=9, task="task")
  assert ours != fewshot.select_support(pairs, 4, seed=10, task="task")
  env = dict(os.environ, PYTHONHASHSEED="123")
  out = subprocess.run([sys.executable, "-c", _SUPPORT_SCRIPT, os.path.dirname(fewshot.__file__)],
                       env=env, check=True, capture_output=True, text=True).stdout
  import json
  assert [tuple(p) for p in json.loads(out.strip().splitlines()[-1])] == list(ours)


def test_fixed_support_drops_queries_equal_to_support():
  rows = [{"task_name": "t", "inputs": f"q{i}", "targets": f"a{i}"} for i in range(6)]
  support = fewshot.select_support([(r["inputs"], r["targets"]) for r in rows], 2, 0, "t")
  out = list(fewshot.fixed_support(_text_ds(rows), lambda: support).as_numpy_iterator())
  assert len(out) == 4
  for ex in out:
    assert ex["inputs"].decode() not in [x.decode() for x in ex["support_inputs"]]
    assert [x.decode() for x in ex["support_inputs"]] == [p[0] for p in support]
  with pytest.raises(DataError, match="task t: only 6 distinct examples; a fixed 6-shot"):
    fewshot.select_support([(r["inputs"], r["targets"]) for r in rows], 6, 0, "t")


def test_more_support_than_sentinels_is_refused():
  of = features.hyper_features(BYTES)
  ds = tf.data.Dataset.from_generator(
      lambda: iter([{"inputs": "q", "targets": "a", "support_inputs": ["x"] * 50,
                     "support_targets": ["y"] * 50}]),
      output_signature={"inputs": tf.TensorSpec([], tf.string),
                        "targets": tf.TensorSpec([], tf.string),
                        "support_inputs": tf.TensorSpec([None], tf.string),
                        "support_targets": tf.TensorSpec([None], tf.string)})
  ds = fewshot.format_few_shot(seqio.preprocessors.tokenize(ds, of), None, of)
  with pytest.raises(tf.errors.InvalidArgumentError, match="exceed the 49 that"):
    list(ds)
