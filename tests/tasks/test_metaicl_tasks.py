"""MetaICL from its JSONL layout and a task-split config."""
import pytest
import seqio

import task_fixtures as fx
from hypert5.data import DataError, get_vocabulary, registry
from tasks import metaicl

LENGTHS = {"hyper_inputs": 256, "inputs": 48, "targets": 16}


@pytest.fixture
def metaicl_dir(tmp_path):
  return fx.write_metaicl(tmp_path / "metaicl", k=4)


def test_train_and_test_tasks_from_config(metaicl_dir):
  names = metaicl.register(str(metaicl_dir), k=4, test_k=4, vocabulary="byte",
                           split_config=str(metaicl_dir / "config" / "tiny.json"))
  assert names == {"train": ["metaicl_glue_sst2", "metaicl_quarel"],
                   "test": ["metaicl_superglue_cb", "metaicl_samsum"]}
  fx.batch("metaicl_train", LENGTHS, "train")
  v = get_vocabulary("byte")

  rows = fx.examples("metaicl_superglue_cb", LENGTHS, "test")
  assert len(rows) == 3 * 10  # rank rows: three options per query
  assert len({tuple(r["hyper_inputs"]) for r in rows}) == 1
  hyper = v.decode(rows[0]["hyper_inputs"].tolist())
  assert hyper.count("superglue-cb train") == 4  # MetaICL's own K-shot file is the support
  assert seqio.get_mixture_or_task("metaicl_superglue_cb").metric_fns[0].__name__ == (
      "rank_classification")

  gen = fx.examples("metaicl_samsum", LENGTHS, "validation")
  assert len(gen) == 6 and v.decode(gen[0]["targets"].tolist()) == "summary 0"
  assert [f.__name__ for f in seqio.get_mixture_or_task("metaicl_samsum").metric_fns] == [
      "rouge_l", "exact_match"]


def test_train_rows_of_several_queries(metaicl_dir):
  metaicl.register(str(metaicl_dir), k=4, test_k=4, vocabulary="byte", queries_per_task=2,
                   split_config=str(metaicl_dir / "config" / "tiny.json"))
  for hyper, texts in fx.grouped_texts("metaicl_train", LENGTHS, queries=2):
    task = texts[0].split(" ")[0]
    assert all(t.startswith(task + " ") for t in texts) and hyper.count(task) == 4
  assert registry.queries_per_task("metaicl_samsum") == 1  # test tasks: one per row


def test_k_larger_than_the_k_shot_file(metaicl_dir):
  metaicl.register(str(metaicl_dir), k=6, test_k=4, vocabulary="byte", test_tasks=["samsum"])
  with pytest.raises(DataError, match=r"samsum_4_100_train.jsonl: task samsum: 4 examples but k=6"):
    fx.examples("metaicl_samsum", LENGTHS, "test")


def test_train_task_smaller_than_k_plus_one(metaicl_dir):
  path = metaicl_dir / "quarel" / "quarel_16384_100_train.jsonl"
  path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
  metaicl.register(str(metaicl_dir), k=4, vocabulary="byte", train_tasks=["quarel"])
  with pytest.raises(DataError, match=r"quarel_16384_100_train.jsonl: task quarel: only 4 "
                     r"distinct examples.*needs at least 5"):
    fx.examples("metaicl_quarel", LENGTHS, "train")


def test_bad_lines_and_empty_files(metaicl_dir):
  path = metaicl_dir / "quarel" / "quarel_16384_100_train.jsonl"
  path.write_text(path.read_text() + '{"input": "x", "output": \n')
  metaicl.register(str(metaicl_dir), k=4, vocabulary="byte", train_tasks=["quarel"])
  with pytest.raises(DataError, match=r"quarel_16384_100_train.jsonl: task quarel: malformed "
                     r"JSON on line 25"):
    fx.examples("metaicl_quarel", LENGTHS, "train")
  path.write_text("")
  metaicl.register(str(metaicl_dir), k=4, vocabulary="byte", train_tasks=["quarel"])
  with pytest.raises(DataError, match=r"quarel_16384_100_train.jsonl: task quarel: the file "
                     r"is empty"):
    fx.examples("metaicl_quarel", LENGTHS, "train")


def test_missing_files_are_named_at_registration(metaicl_dir):
  with pytest.raises(DataError, match=r"metaicl/nope: task nope: no nope_<k>_100_train.jsonl"):
    metaicl.register(str(metaicl_dir), vocabulary="byte", train_tasks=["nope"])
