"""`python -m hypert5.demo --quick` end to end: every stage runs (few steps, 2 held-out
tasks) and writes the table, the tuning-curve PNG and a PEFT adapter that loads back."""
import json
import os

import hypert5
from hypert5 import demo
from hypert5.models import configs


def test_quick_demo_writes_table_png_and_adapter(tmp_path):
  out = str(tmp_path / "demo_out")
  table = demo.run_demo(out, quick=True)

  with open(os.path.join(out, "table.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(table))
  assert saved["quick"] and saved["heldout_tasks"] == 2
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
