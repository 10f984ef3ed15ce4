"""Golden parity with Hugging Face transformers and PEFT (files made by tests/make_goldens.py)."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

import hypert5
from hypert5 import decoding

GOLDENS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "goldens")


def _golden(name):
  path = os.path.join(GOLDENS, name)
  return path, dict(np.load(os.path.join(path, "golden.npz")))


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
def test_logits_match_transformers(name):
  path, g = _golden(name)
  config, params = hypert5.load_t5(path)
  assert config.tie_embeddings == (name == "t5_v1_0")
  logits = hypert5.T5(config).apply({"params": params}, g["encoder_input_tokens"],
                                    g["decoder_input_tokens"])
  np.testing.assert_allclose(logits, g["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
@pytest.mark.parametrize("scan", [False, True])
def test_greedy_matches_transformers(name, scan):
  path, g = _golden(name)
  config, params = hypert5.load_t5(path, config_overrides={"scan_layers": scan})
  tokens = decoding.greedy(hypert5.T5(config), params, jnp.asarray(g["encoder_input_tokens"]),
                           g["greedy_tokens"].shape[1])
  np.testing.assert_array_equal(tokens, g["greedy_tokens"])
  assert (g["greedy_tokens"] == 1).any(), "golden should exercise EOS"


def test_peft_lora_adapter_matches_peft():
  base_path, _ = _golden("t5_v1_1")
  path, g = _golden("peft_lora_v1_1")
  config, params = hypert5.load_t5(base_path)
  lora = hypert5.load_peft_adapter(path, config)
  assert sorted(lora.targets()) == sorted(
      (k, p) for k in ("encoder_self", "decoder_self", "decoder_cross") for p in ("q", "v"))
  logits = hypert5.T5(config).apply({"params": params}, g["encoder_input_tokens"],
                                    g["decoder_input_tokens"], lora)
  np.testing.assert_allclose(logits, g["logits"], atol=1e-4, rtol=0)


def test_saved_adapter_reloads_in_peft_with_same_logits():
  """tests/goldens/ours_lora_v1_1 was written by save_peft_adapter; make_goldens.py
  --check_adapter loaded it in PEFT and saved PEFT's logits beside it."""
  base_path, inputs = _golden("t5_v1_1")  # PEFT ran our adapter on these inputs
  path, g = _golden("ours_lora_v1_1")
  config, params = hypert5.load_t5(base_path)
  lora = hypert5.load_peft_adapter(path, config)
  logits = hypert5.T5(config).apply({"params": params}, inputs["encoder_input_tokens"],
                                    inputs["decoder_input_tokens"], lora)
  assert np.abs(logits - inputs["logits"]).max() > 0.1  # the adapter does something
  np.testing.assert_allclose(logits, g["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
def test_beam_search_matches_transformers(name):
  path, g = _golden(name)
  config, params = hypert5.load_t5(path)
  tokens, scores = decoding.beam_search(
      hypert5.T5(config), params, jnp.asarray(g["encoder_input_tokens"]),
      g["beam_tokens"].shape[1], num_beams=4, length_penalty=1.0, early_stopping=True)
  np.testing.assert_array_equal(tokens, g["beam_tokens"])
  np.testing.assert_allclose(scores, g["beam_scores"], atol=1e-5)
