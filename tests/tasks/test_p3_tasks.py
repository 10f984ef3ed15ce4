"""P3 from TFRecords: the T0 training mixture and the held-out rank-classification set."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

import task_fixtures as fx
from hypert5.data import DataError, get_vocabulary
from hypert5.data import metrics
from hypert5.data import registry
from tasks import p3

LENGTHS = {"hyper_inputs": 256, "inputs": 64, "targets": 8}


@pytest.fixture
def p3_dir(tmp_path):
  return fx.write_p3(tmp_path / "p3")


def test_registers_t0_train_and_eval(p3_dir):
  names = p3.register(str(p3_dir), k=2, vocabulary="byte", modes=("hyper", "plain"))
  assert names["train"] == ["p3_ag_news_classify", "p3_glue_mrpc_paraphrase"]
  assert names["eval"] == ["p3_super_glue_rte_GPT_3_style"]  # score_eval and others skipped
  mixture = seqio.get_mixture_or_task("p3_t0_train")
  assert sorted(t.name for t in mixture.tasks) == names["train"]
  assert "p3_plain_t0_eval" in seqio.MixtureRegistry.names()

  out = fx.batch("p3_t0_train", LENGTHS, "train")
  v = get_vocabulary("byte")
  hyper = v.decode(out["hyper_encoder_input_tokens"][0].tolist())
  query = v.decode(out["encoder_input_tokens"][0].tolist())
  assert query not in hyper  # never the query itself
  assert hyper.count(query.split(" train")[0]) == 2  # K=2 examples of the same task
  assert v.decode(out["decoder_target_tokens"][0].tolist()).startswith("label")  # stripped


def test_training_rows_of_several_queries(p3_dir):
  p3.register(str(p3_dir), k=2, vocabulary="byte", queries_per_task=3)
  for hyper, texts in fx.grouped_texts("p3_t0_train", LENGTHS, queries=3):
    prompt = texts[0].split(" train")[0]
    assert all(t.startswith(prompt + " train") for t in texts) and hyper.count(prompt) == 2
  assert registry.queries_per_task("p3_super_glue_rte_GPT_3_style") == 1  # eval: one per row


def test_eval_task_rank_rows_share_one_fixed_support(p3_dir):
  p3.register(str(p3_dir), k=2, vocabulary="byte")
  rows = fx.examples("p3_super_glue_rte_GPT_3_style", LENGTHS, "validation")
  v = get_vocabulary("byte")
  assert len(rows) == 2 * 12  # two choices per query
  assert v.decode(rows[0]["hyper_inputs"].tolist()).count("rte train") == 2  # support: train
  assert {tuple(r["hyper_inputs"]) for r in rows} == {tuple(rows[0]["hyper_inputs"])}
  assert [tuple(r["idx"]) for r in rows[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert [v.decode(r["targets"].tolist()) for r in rows[:2]] == ["yes", "no"]
  assert sum(r["is_correct"] for r in rows) == len(rows) // 2
  support_text = v.decode(rows[0]["hyper_inputs"].tolist())
  for r in rows:
    assert v.decode(r["inputs"].tolist()) not in support_text
  # The metric reads the rows' postprocessed targets.
  task = seqio.get_mixture_or_task("p3_super_glue_rte_GPT_3_style")
  targets = [task.postprocess_fn(None, example=r, is_target=True) for r in rows]
  scores = [0.0 if r["is_correct"] else -1.0 for r in rows]
  assert metrics.rank_classification(targets, scores)["accuracy"] == 100.0


def test_support_set_is_stable_across_registrations(p3_dir):
  p3.register(str(p3_dir), k=2, vocabulary="byte", seed=3)
  first = fx.examples("p3_super_glue_rte_GPT_3_style", LENGTHS, "validation", n=1)
  p3.register(str(p3_dir), k=2, vocabulary="byte", seed=3)
  again = fx.examples("p3_super_glue_rte_GPT_3_style", LENGTHS, "validation", n=1)
  np.testing.assert_array_equal(first[0]["hyper_inputs"], again[0]["hyper_inputs"])


def test_missing_feature_names_file_task_and_feature(tmp_path):
  root = fx.write_p3(tmp_path / "p3", drop=("targets_pretokenized",))
  with pytest.raises(DataError, match=r"super_glue_rte_GPT_3_style/validation.tfrecord.*task "
                     r"p3_super_glue_rte_GPT_3_style: field 'targets_pretokenized': missing"):
    p3.register(str(root), k=2, vocabulary="byte")  # eval files are checked on registration
  p3.register(str(root), k=2, vocabulary="byte", eval_datasets=())
  with pytest.raises(DataError, match=r"ag_news_classify/train.tfrecord.*task ag_news_classify"
                     r".*'targets_pretokenized'.*missing"):
    fx.examples("p3_ag_news_classify", LENGTHS, "train")


def test_record_missing_a_feature_later_in_the_file(p3_dir):
  records = [fx.p3_record(f"news {i}: text", "label") for i in range(4)]
  records.append(fx.p3_record("news 4: text", "label", drop=("targets_pretokenized",)))
  fx.write_tfrecord(p3_dir / "data" / "ag_news_classify" / "train.tfrecord-00000-of-00001",
                    records)
  p3.register(str(p3_dir), k=2, vocabulary="byte")
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"ag_news_classify/train.tfrecord-00000-of-00001.*task "
                     r"ag_news_classify: field .*targets_pretokenized.*missing from a record"):
    fx.examples("p3_ag_news_classify", LENGTHS, "train")


def test_empty_tfrecord_file_is_an_error(p3_dir):
  fx.write_tfrecord(p3_dir / "data" / "ag_news_classify" / "train.tfrecord-00001-of-00002", [])
  p3.register(str(p3_dir), k=2, vocabulary="byte")
  with pytest.raises(DataError, match=r"train.tfrecord-00001-of-00002.*ag_news_classify.*empty"):
    fx.examples("p3_ag_news_classify", LENGTHS, "train")
