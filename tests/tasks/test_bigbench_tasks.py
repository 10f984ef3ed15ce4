"""BIG-bench JSON tasks: a task.json directory, a JSONL of tasks, and the shared file."""
import json

import pytest
import seqio

import task_fixtures as fx
from hypert5.data import DataError, get_vocabulary
from tasks import bigbench

LENGTHS = {"hyper_inputs": 256, "inputs": 96, "targets": 16}


def test_task_json_directory(tmp_path):
  root = fx.write_bigbench_dir(tmp_path / "benchmark_tasks")
  names = bigbench.register(str(root), k=2, vocabulary="byte", heldout=["colors"],
                            modes=("hyper", "icl"))
  assert names == {"train": ["bigbench_counting", "bigbench_family.sub_a"],
                   "heldout": ["bigbench_colors"]}
  fx.batch("bigbench_train", LENGTHS, "train")
  v = get_vocabulary("byte")

  rows = fx.examples("bigbench_colors", LENGTHS, "validation")
  assert len(rows) == 3 * (8 - 2)  # 3 choices per query; the 2 support examples left out
  assert len({tuple(r["hyper_inputs"]) for r in rows}) == 1
  assert v.decode(rows[0]["hyper_inputs"].tolist()).startswith("Task colors.")
  assert v.decode(rows[0]["inputs"].tolist()).endswith("choice: green")  # choices appended
  assert sum(r["is_correct"] for r in rows) == 8 - 2
  task = seqio.get_mixture_or_task("bigbench_counting")
  refs = task.postprocess_fn(None, example=fx.examples(
      "bigbench_counting", LENGTHS, "test", n=1)[0], is_target=True)
  assert len(refs) == 2 and refs[1].startswith("number")


def test_training_rows_of_several_queries(tmp_path):
  root = fx.write_bigbench_dir(tmp_path / "benchmark_tasks")
  bigbench.register(str(root), k=2, vocabulary="byte", heldout=["colors"],
                    queries_per_task=2)
  for hyper, texts in fx.grouped_texts("bigbench_train", LENGTHS, queries=2, size=4):
    task = hyper.split(".")[0]  # "Task counting" / "Task sub_a"
    assert all(t.startswith(task.split()[1] + " say") for t in texts), (task, texts)
  rows = fx.examples("bigbench_colors", LENGTHS, "validation")  # held out: one per row
  assert len(rows) == 3 * (8 - 2) and rows[0]["inputs"].ndim == 1


def test_jsonl_gz_of_tasks(tmp_path):
  path = fx.write_bigbench_jsonl(tmp_path / "tasks.jsonl.gz")
  names = bigbench.register(str(path), k=2, vocabulary="byte", heldout=["counting"])
  assert names == {"train": ["bigbench_colors"], "heldout": ["bigbench_counting"]}
  fx.batch("bigbench_heldout", LENGTHS, "test")


def test_example_without_target(tmp_path):
  task = fx.bigbench_task("broken", multiple_choice=False)
  del task["examples"][5]["target"]
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "task.json").write_text(json.dumps(task))
  with pytest.raises(DataError, match=r"broken/task.json: task broken: field 'target': "
                     r"examples\[5\]: missing"):
    bigbench.register(str(tmp_path), vocabulary="byte")


def test_too_few_examples_raise_or_skip(tmp_path):
  path = tmp_path / "tasks.jsonl"
  tasks = [fx.bigbench_task("tiny", False, n=3), fx.bigbench_task("ok", False)]
  path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
  with pytest.raises(DataError, match=r"tasks.jsonl: task tiny: field 'examples': 3 distinct "
                     r"examples; 3-shot needs at least 4"):
    bigbench.register(str(path), k=3, vocabulary="byte")
  names = bigbench.register(str(path), k=3, vocabulary="byte", skip_invalid=True, heldout=[])
  assert names["train"] == ["bigbench_ok"]


def test_max_train_tasks_keeps_a_seeded_subset_of_training_tasks(tmp_path):
  path = tmp_path / "tasks.jsonl"
  tasks = [fx.bigbench_task(f"t{i}", False) for i in range(6)]
  path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
  names = bigbench.register(str(path), k=2, vocabulary="byte", heldout=["t0"],
                            max_train_tasks=2)
  assert names["heldout"] == ["bigbench_t0"] and len(names["train"]) == 2
  assert bigbench.register(str(path), k=2, vocabulary="byte", heldout=["t0"],
                           max_train_tasks=2) == names  # the same subset every time
  other = bigbench.register(str(path), k=2, vocabulary="byte", heldout=["t0"],
                            max_train_tasks=2, seed=1)
  assert other["heldout"] == ["bigbench_t0"] and len(other["train"]) == 2



def test_tasks_related_to_held_out_ones_stay_out_of_training(tmp_path):
  """Sibling subtasks and translations (`entailed_polarity_hindi`) of a held-out task would
  leak it into training; the seeded fraction split holds out whole top-level tasks."""
  path = tmp_path / "tasks.jsonl"
  names = ["fam/a", "fam/b", "polar", "polar_hindi", "polarity_other", "other"]
  tasks = [dict(fx.bigbench_task(n.split("/")[-1], False), task_path=n) for n in names]
  path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
  chosen = bigbench.register(str(path), k=2, vocabulary="byte", heldout=["fam/a", "polar"])
  assert chosen == {"heldout": ["bigbench_fam.a", "bigbench_polar"],
                    "train": ["bigbench_polarity_other", "bigbench_other"]}
  tops = {n: n.split("/")[0] for n in names}
  for seed in range(8):
    split = bigbench.register(str(path), k=2, vocabulary="byte", heldout_fraction=0.5,
                              seed=seed)
    held = {t for n, t in tops.items() if f"bigbench_{n.replace('/', '.')}" in split["heldout"]}
    trained = {t for n, t in tops.items() if f"bigbench_{n.replace('/', '.')}" in split["train"]}
    assert not held & trained, (seed, split)
    assert not any(t.startswith(h + "_") or h.startswith(t + "_")
                   for t in trained for h in held), (seed, split)

def test_shared_bigbench_file(shared_data):
  vocab = get_vocabulary(str(shared_data / "t5_spiece.model"))
  path = shared_data / "bigbench_tasks_first200.jsonl.gz"
  picked = ["abstract_narrative_understanding/4_distractors", "arithmetic/1_digit_addition"]
  names = bigbench.register(str(path), k=2, vocabulary=vocab, tasks=picked,
                            heldout=picked[:1])
  assert names["heldout"] == ["bigbench_abstract_narrative_understanding.4_distractors"]
  out = fx.batch("bigbench_train", {"hyper_inputs": 256, "inputs": 128, "targets": 16},
                 "train")
  assert out["encoder_input_tokens"].shape == (4, 128)
  rows = fx.examples(names["heldout"][0], {"hyper_inputs": 512, "inputs": 256,
                                           "targets": 32}, "test", n=10)
  assert {int(r["is_correct"]) for r in rows} == {0, 1}
