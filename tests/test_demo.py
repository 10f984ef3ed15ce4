"""`python -m hypert5.demo --quick` end to end: every stage runs (few steps, 2 held-out
tasks) and writes the table, the tuning-curve PNG and a PEFT adapter that loads back."""
import json
import os

import pytest

import hypert5
from hypert5 import demo
from hypert5.models import configs
from scripts import load_script


def test_quick_demo_writes_table_png_and_adapter(tmp_path):
  out = str(tmp_path / "demo_out")
  table = demo.run_demo(out, quick=True, hyper_steps=12)

  with open(os.path.join(out, "table.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(table))
  assert saved["quick"] and saved["heldout_tasks"] == 2
  # --hyper_steps reaches both HyperT5 stages and only them.
  assert saved["steps"] == {**{k: v[1] for k, v in demo.STEPS.items()},
                            "hyper_prefix": 12, "hyper_lora": 12}
  for stage in ("hyper_prefix", "hyper_lora"):
    assert os.listdir(os.path.join(out, "runs", stage, "checkpoints")) == ["12"]
  assert set(saved["rows"]) == {key for key, _ in demo.ROWS}
  for row in saved["rows"].values():
    assert 0.0 <= row["exact_match"] <= 100.0  # percent, as seqio reports it
  curves = saved["tuning"]["curves"]
  assert set(curves) == {"hyper-init", "random init"}
  assert all(len(c) == demo.STEPS["tune"][1] for c in curves.values())

  with open(os.path.join(out, "tuning_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  adapter = os.path.join(out, "adapter")
  assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
  lora = hypert5.load_peft_adapter(adapter, configs.get_config("tiny"))
  assert lora.rank == 8

  # benchmarks/reader_accuracy.py on this downstream: teacher-forced exact match with the
  # description as text is the demo's greedy oracle row, over the same 2 x 64 queries.
  reader_accuracy = load_script("benchmarks/reader_accuracy.py")
  readers = reader_accuracy.score(os.path.join(out, "runs", "downstream"), tasks=2)
  assert readers["rows"] == 2 * 64
  assert abs(readers["text"] - saved["rows"]["oracle"]["exact_match"]) < 1e-9
  assert all(0.0 <= readers[way] <= 100.0 for way in ("prefix", "lora"))
  train = reader_accuracy.score(os.path.join(out, "runs", "downstream"), split="train",
                               rows=64)
  assert train["rows"] == 64
  assert all(0.0 <= train[way] <= 100.0 for way in ("text", "prefix", "lora"))


def test_reader_accuracy_names_a_missing_downstream(tmp_path):
  with pytest.raises(SystemExit, match=r"downstream/hf not found"):
    load_script("benchmarks/reader_accuracy.py").score(str(tmp_path / "downstream"))


def test_copy_reference_scores_the_evaluated_queries():
  """The copy row is exact match of echoing each query, over the same validation rows the
  seqio evaluation of the held-out tasks reads."""
  import seqio
  import tasks  # noqa: F401  registers the synthetic tasks
  from tasks import synthetic
  per_task = []
  for i in range(2):
    ds = seqio.get_mixture_or_task(synthetic.heldout_task_name(i, "plain")).get_dataset(
        None, split="validation", shuffle=False)
    rows = [(ex["inputs_pretokenized"], ex["targets_pretokenized"])
            for ex in ds.as_numpy_iterator()]
    per_task.append(100.0 * sum(x == y for x, y in rows) / len(rows))
  expected = sum(per_task) / 2
  assert 0.0 < expected < 100.0
  assert abs(demo.copy_reference(2)["exact_match"] - expected) < 1e-9
