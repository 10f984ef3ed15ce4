"""PEFT adapter save/load round trip and its error messages."""
import json
import os

import numpy as np
import pytest
import safetensors.numpy

import hypert5
from hypert5.models import configs, peft as peft_lib

CFG = configs.get_config("tiny")


def _lora(targets, rank=3, seed=0):
  rng = np.random.default_rng(seed)
  a, b = {}, {}
  for kind, proj in targets:
    sa, sb = peft_lib.lora_shapes(CFG, kind, proj, rank)
    a.setdefault(kind, {})[proj] = rng.normal(size=(1,) + sa).astype(np.float32)
    b.setdefault(kind, {})[proj] = rng.normal(size=(1,) + sb).astype(np.float32)
  return hypert5.LoRA(a=a, b=b, alpha=5.0)


@pytest.mark.parametrize("targets", [
    [(k, p) for k in peft_lib.ATTENTION_KINDS for p in ("q", "v")],
    [("encoder_self", "o"), ("decoder_mlp", "wi_0"), ("decoder_cross", "k")],
])
def test_round_trip_is_exact(tmp_path, targets):
  lora = _lora(targets)
  hypert5.save_peft_adapter(lora, CFG, tmp_path / "adapter")
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    acfg = json.load(f)
  assert acfg["task_type"] == "SEQ_2_SEQ_LM" and acfg["r"] == 3
  if len(targets) == 6:
    assert acfg["target_modules"] == ["q", "v"]
  back = hypert5.load_peft_adapter(tmp_path / "adapter", CFG)
  assert back.alpha == lora.alpha and sorted(back.targets()) == sorted(lora.targets())
  for kind, proj in targets:
    np.testing.assert_array_equal(back.a[kind][proj], lora.a[kind][proj])
    np.testing.assert_array_equal(back.b[kind][proj], lora.b[kind][proj])


def test_errors_name_the_file_and_tensor(tmp_path):
  with pytest.raises(hypert5.CheckpointError, match="adapter_config.json: missing"):
    hypert5.load_peft_adapter(tmp_path, CFG)
  lora = _lora([("encoder_self", "q")])
  hypert5.save_peft_adapter(lora, CFG, tmp_path / "a")
  weights = tmp_path / "a" / "adapter_model.safetensors"
  tensors = safetensors.numpy.load_file(weights)
  key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
  tensors[key] = np.zeros((3, 7), np.float32)
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(hypert5.CheckpointError,
                     match=r"SelfAttention\.q\.lora_A\.weight has shape \(3, 7\), expected \(3, 64\)"):
    hypert5.load_peft_adapter(tmp_path / "a", CFG)
  with pytest.raises(ValueError, match="batch 2"):
    hypert5.save_peft_adapter(peft_lib.broadcast_batch(lora, 2), CFG, tmp_path / "b")
  assert not os.path.exists(tmp_path / "b")
