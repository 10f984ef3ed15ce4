"""Super-NaturalInstructions from a local checkout layout, and the shared 24-task subset."""
import json

import pytest
import seqio

import task_fixtures as fx
from hypert5.data import DataError, get_vocabulary
from tasks import sni

LENGTHS = {"hyper_inputs": 512, "inputs": 64, "targets": 32}


@pytest.fixture
def sni_dir(tmp_path):
  return fx.write_sni(tmp_path / "natural-instructions")


def test_train_and_test_mixtures(sni_dir):
  names = sni.register(str(sni_dir), k=2, vocabulary="byte", modes=("hyper", "icl"))
  assert names == {"train": ["sni_task001_a", "sni_task002_b"], "test": ["sni_task003_c"]}
  assert sorted(t.name for t in seqio.get_mixture_or_task("sni_train").tasks) == names["train"]
  assert [t.name for t in seqio.get_mixture_or_task("sni_icl_test").tasks] == [
      "sni_icl_task003_c"]
  fx.batch("sni_train", LENGTHS, "train")

  v = get_vocabulary("byte")
  # task002 has the list form of Definition; both forms give the same text.
  for task in ("sni_task001_a", "sni_task002_b"):
    ex = fx.examples(task, LENGTHS, "train", n=1)[0]
    hyper = v.decode(ex["hyper_inputs"].tolist())
    assert hyper.startswith("Repeat the input backwards, word by word.")
    assert hyper.count("example ") == 2 and ex["fewshot_kept"] == 2  # the first K positives
    assert v.decode(ex["targets"].tolist()) == " ".join(
        v.decode(ex["inputs"].tolist()).split()[::-1])  # the first output


def test_training_rows_of_several_instances(sni_dir):
  sni.register(str(sni_dir), k=2, vocabulary="byte", queries_per_task=3)
  for hyper, texts in fx.grouped_texts("sni_train", LENGTHS, queries=3):
    assert hyper.startswith("Repeat the input backwards")
    assert all(t.startswith("item ") for t in texts)
  fx.batch("sni_test", LENGTHS, "test")  # test tasks keep one instance per row


def test_eval_split_keeps_all_references(sni_dir):
  sni.register(str(sni_dir), k=2, vocabulary="byte", max_test_instances=3)
  rows = fx.examples("sni_task003_c", LENGTHS, "test")
  assert len(rows) == 3
  task = seqio.get_mixture_or_task("sni_task003_c")
  refs = task.postprocess_fn(None, example=rows[0], is_target=True)
  assert len(refs) == 2 and refs[1] == refs[1].upper()
  assert [f.__name__ for f in task.metric_fns] == ["rouge_l", "exact_match"]


def test_in_context_inputs_hold_definition_examples_and_query(sni_dir):
  sni.register(str(sni_dir), k=2, vocabulary="byte", modes=("icl",))
  ex = fx.examples("sni_icl_task001_a", {"inputs": 256, "targets": 32}, "train", n=1)[0]
  v = get_vocabulary("byte")
  text = v.decode(ex["inputs"].tolist())
  assert text.startswith("Repeat the input") and text.endswith(ex["inputs_pretokenized"].decode())
  assert ex["inputs"][-1] == 1 and ex["inputs"][-2] == v.vocab_size - 1 - 5  # <extra_id_5>


def test_malformed_json_names_file_and_task(sni_dir):
  (sni_dir / "tasks" / "task002_b.json").write_text('{"Definition": "x", "Instances": [')
  sni.register(str(sni_dir), k=2, vocabulary="byte")
  with pytest.raises(DataError, match=r"task002_b.json: task task002_b: malformed JSON at line 1"):
    fx.examples("sni_task002_b", LENGTHS, "train")


def test_too_few_positive_examples(sni_dir):
  path = sni_dir / "tasks" / "task001_a.json"
  task = json.loads(path.read_text())
  task["Positive Examples"] = task["Positive Examples"][:1]
  path.write_text(json.dumps(task))
  sni.register(str(sni_dir), k=2, vocabulary="byte")
  with pytest.raises(DataError, match=r"task001_a.json: task task001_a: field 'Positive "
                     r"Examples': has 1 examples but k=2"):
    fx.examples("sni_task001_a", LENGTHS, "train")


def test_missing_instance_field(sni_dir):
  path = sni_dir / "tasks" / "task001_a.json"
  task = json.loads(path.read_text())
  del task["Instances"][3]["output"]
  path.write_text(json.dumps(task))
  sni.register(str(sni_dir), k=2, vocabulary="byte")
  with pytest.raises(DataError, match=r"task001_a.json: task task001_a: field 'output': "
                     r"missing in Instances\[3\]"):
    fx.examples("sni_task001_a", LENGTHS, "train")


def test_over_long_definition_is_truncated_and_counted(sni_dir):
  sni.register(str(sni_dir), k=2, vocabulary="byte")
  ex = fx.examples("sni_task001_a", {"hyper_inputs": 20, "inputs": 64, "targets": 32},
                   "train", n=1)[0]
  assert len(ex["hyper_inputs"]) == 20 and ex["hyper_inputs"][-1] == 1
  assert ex["fewshot_kept"] == 0 and ex["fewshot_dropped"] == 2
  assert ex["hyper_inputs_truncated"] == len("Repeat the input backwards, word by word.") - 19


def test_shared_subset_loads(shared_data):
  vocab = get_vocabulary(str(shared_data / "t5_spiece.model"))
  files = sorted((shared_data / "sni_subset").glob("*.json"))
  assert len(files) == 24
  for path in files:  # every real file parses and validates (Definition is a string here)
    data = sni.load_task(str(path), path.stem, k=2)
    assert data["definition"] and len(data["support"]) == 2 and data["instances"]
  names = [p.stem for p in files]
  sni.register(str(shared_data / "sni_subset"), k=2, vocabulary=vocab,
               train_tasks=names[:3], test_tasks=names[-1:])
  out = fx.batch("sni_train", LENGTHS, "train", size=8)
  assert (out["hyper_encoder_input_tokens"][:, 0] > 1).all()
  rows = fx.examples("sni_" + names[-1], LENGTHS, "test", n=200)
  assert 0 < len(rows) <= 100
