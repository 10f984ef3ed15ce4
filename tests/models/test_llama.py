"""Llama: golden parity with Hugging Face LlamaForCausalLM (tests/make_llama_goldens.py),
rope scaling, cached generation, import / export, the PEFT prefix-tuning convention, and
the sharded forward."""
import functools
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from hypert5.models import llama
from hypert5.training import llama_io, partitioning
from hypert5.training.model_io import CheckpointError

GOLDENS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "goldens")
BASE = os.path.join(GOLDENS, "llama_tiny")
PREFIX = os.path.join(GOLDENS, "llama_ours_prefix")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(BASE, "golden.npz")))


@pytest.fixture(scope="module")
def tiny():
  return llama_io.load_llama(BASE)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens, peft, mask):
  return llama.Llama(config).apply({"params": params}, tokens, peft, input_mask=mask)


def _logits(config, params, g, peft=None):
  return _forward(config, params, g["input_ids"], peft, g["attention_mask"])


def test_config_is_read_from_hf(tiny):
  config, params = tiny
  assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
  assert not config.tie_embeddings and config.layer_norm_eps == 1e-6
  assert params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"].shape == (64, 32)


def test_logits_match_transformers_with_padding(tiny, golden):
  config, params = tiny
  assert (golden["attention_mask"] == 0).any()  # the golden has right padding
  np.testing.assert_allclose(_logits(config, params, golden), golden["logits"], atol=1e-4, rtol=0)
  # Right padding needs no mask for real positions: causal attention never sees a pad.
  real = golden["attention_mask"].astype(bool)
  no_mask = _forward(config, params, golden["input_ids"], None, np.ones_like(real))
  np.testing.assert_allclose(no_mask[real], golden["logits"][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,rope", [
    ("logits_linear", {"rope_type": "linear", "factor": 2.0}),
    ("logits_llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
])
def test_rope_scaling_matches_transformers(tiny, golden, name, rope):
  _, params = tiny
  with open(os.path.join(BASE, "config.json")) as f:
    hf = json.load(f)
  new = llama_io.hf_config_to_llama_config({**hf, "rope_parameters": {**rope, "rope_theta": 1e4}})
  legacy = dict(hf, rope_theta=1e4, rope_scaling={"type": rope["rope_type"], **rope})
  legacy.pop("rope_parameters")
  assert llama_io.hf_config_to_llama_config(legacy) == new  # transformers 4.x form
  np.testing.assert_allclose(_logits(new, params, golden), golden[name], atol=1e-4, rtol=0)


def test_unsupported_rope_and_architecture_are_refused():
  with pytest.raises(CheckpointError, match="rope type 'yarn' is not supported"):
    llama_io.hf_config_to_llama_config({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(CheckpointError, match="model_type='mistral'"):
    llama_io.hf_config_to_llama_config({"model_type": "mistral"})
  with pytest.raises(CheckpointError, match="attention_bias=True"):
    llama_io.hf_config_to_llama_config({"attention_bias": True})


@pytest.mark.parametrize("scan", [False, True])
def test_cached_greedy_matches_transformers(golden, scan):
  config, params = llama_io.load_llama(BASE, config_overrides={"scan_layers": scan})
  lengths = golden["attention_mask"].sum(1)
  want = golden["greedy_tokens"]
  assert (want == config.eos_token_id).any() and (want[:, -1] != 0).any()
  cached = llama.generate(config, params, golden["input_ids"], lengths, want.shape[1])
  np.testing.assert_array_equal(cached, want)
  if not scan:  # whatever follows a prompt (e.g. the targets of a batch) is never seen
    noisy = np.where(golden["attention_mask"] > 0, golden["input_ids"], 77)
    np.testing.assert_array_equal(
        llama.generate(config, params, noisy, lengths, want.shape[1]), want)


def test_cached_sampling_with_a_prefix_equals_uncached(tiny, golden):
  """The uncached path re-runs the whole sequence each step: the cache's reference."""
  config, params = tiny
  prefix = llama_io.load_peft_prefix(PREFIX, config)
  lengths = golden["attention_mask"].sum(1)
  kw = dict(temperature=1.5, top_k=20, rng=jax.random.key(3), eos_id=-1)
  a = llama.generate(config, params, golden["input_ids"], lengths, 6, prefix, **kw)
  b = llama.generate(config, params, golden["input_ids"], lengths, 6, prefix, use_cache=False,
                     **kw)
  np.testing.assert_array_equal(a, b)


def test_peft_reads_our_prefix_with_the_same_logits(tiny, golden):
  """llama_ours_prefix was written by save_peft_prefix; PEFT loaded it as a prefix-tuning
  adapter and saved its logits (make_llama_goldens.py --check_prefix)."""
  config, params = tiny
  prefix = llama_io.load_peft_prefix(PREFIX, config)
  assert prefix.keys["decoder_self"].shape == (1, 2, 4, 2, 16)
  ours = _logits(config, params, golden, prefix)
  peft_logits = np.load(os.path.join(PREFIX, "golden.npz"))["logits"]
  assert np.abs(ours - golden["logits"]).max() > 1.0  # the prefix matters
  np.testing.assert_allclose(ours, peft_logits, atol=1e-4, rtol=0)


def test_prefix_export_round_trips_and_rotates_keys(tiny, tmp_path):
  config, _ = tiny
  prefix = llama_io.load_peft_prefix(PREFIX, config)
  llama_io.save_peft_prefix(prefix, config, tmp_path / "a")
  stored = safetensors.numpy.load_file(os.path.join(PREFIX, "adapter_model.safetensors"))
  again = safetensors.numpy.load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
  np.testing.assert_allclose(again["prompt_embeddings"], stored["prompt_embeddings"], atol=1e-6)
  # Values are stored as they are; keys rotated at positions 0..P-1 (position 0: unchanged).
  emb = stored["prompt_embeddings"].reshape(4, 2, 2, 2, 16)  # [P, layers, k/v, kv_heads, hd]
  np.testing.assert_allclose(emb[:, :, 1].transpose(1, 0, 2, 3), prefix.values["decoder_self"][0],
                             atol=1e-6)
  np.testing.assert_allclose(emb[0, :, 0], prefix.keys["decoder_self"][0, :, 0], atol=1e-6)
  assert np.abs(emb[1, :, 0] - prefix.keys["decoder_self"][0, :, 1]).max() > 1e-2
  with open(tmp_path / "a" / "adapter_config.json") as f:
    acfg = json.load(f)
  assert acfg["peft_type"] == "PREFIX_TUNING" and acfg["token_dim"] == 32
  acfg["prefix_projection"] = True
  with open(tmp_path / "a" / "adapter_config.json", "w") as f:
    json.dump(acfg, f)
  with pytest.raises(CheckpointError, match="prefix_projection=true"):
    llama_io.load_peft_prefix(tmp_path / "a", config)


def test_export_round_trip_and_tied_embeddings(tiny, golden, tmp_path):
  config, params = tiny
  scanned = llama_io.stack_layers(params, config)
  llama_io.save_hf_llama(config.replace(scan_layers=True), scanned, tmp_path / "untied")
  config2, params2 = llama_io.load_llama(tmp_path / "untied")
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  with pytest.raises(CheckpointError, match="not empty"):
    llama_io.save_hf_llama(config, params, tmp_path / "untied")
  # Tied: the HF golden is the same weights with lm_head = embed_tokens.
  tied = config.replace(tie_embeddings=True)
  dec = {k: v for k, v in params["decoder"].items() if k != "logits_dense"}
  llama_io.save_hf_llama(tied, {**params, "decoder": dec}, tmp_path / "tied")
  config3, params3 = llama_io.load_llama(tmp_path / "tied")
  assert config3.tie_embeddings
  np.testing.assert_allclose(_logits(config3, params3, golden), golden["logits_tied"], atol=1e-4,
                             rtol=0)


def test_import_errors_name_the_tensor(tmp_path, tiny):
  config, params = tiny
  llama_io.save_hf_llama(config, params, tmp_path / "m")
  weights = str(tmp_path / "m" / "model.safetensors")
  tensors = safetensors.numpy.load_file(weights)
  tensors.pop("lm_head.weight")
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(CheckpointError, match=r"'lm_head.weight'.*missing.*tie_word_embeddings"):
    llama_io.load_llama(tmp_path / "m")
  with pytest.raises(CheckpointError, match=r"k_proj.weight.*shape \(32, 64\).*expects \(64, 64\)"):
    llama_io.load_llama(BASE, config_overrides={"num_kv_heads": 4})
  with pytest.raises(CheckpointError, match="unknown LlamaConfig field"):
    llama_io.load_llama(BASE, config_overrides={"num_kv": 4})


def test_scan_and_remat_give_the_same_logits(tiny, golden):
  config, params = tiny
  ref = _logits(config, params, golden)
  scanned = llama_io.stack_layers(params, config)
  # (scan alone is covered by the scanned greedy decode)
  cfg = config.replace(scan_layers=True, remat_policy="full")
  np.testing.assert_allclose(_logits(cfg, scanned, golden), ref, atol=1e-5)


def test_lora_with_zero_b_is_the_frozen_model(tiny, golden):
  from hypert5.models import gisting
  config, params = tiny
  lora = gisting.random_lora(gisting.HyperLlamaConfig(config), jax.random.key(0))
  np.testing.assert_array_equal(_logits(config, params, golden, lora),
                                _logits(config, params, golden))
  lora = lora.replace(b=jax.tree.map(lambda b: b + 0.1, lora.b))
  assert np.abs(_logits(config, params, golden, lora) - golden["logits"]).max() > 1e-2


def test_sharded_forward_matches_single_device(tiny, golden):
  config, params = tiny
  prefix = llama_io.load_peft_prefix(PREFIX, config)
  ref = _logits(config, params, golden, prefix)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  shardings = partitioning.param_shardings(llama.abstract_params(config), mesh)
  fwd = lambda p, t, m, pre: llama.Llama(config).apply({"params": p}, t, pre, input_mask=m)
  with jax.set_mesh(mesh), partitioning.axis_rules():
    out = jax.jit(fwd, in_shardings=(shardings, None, None, None))(
        jax.device_put(params, shardings), golden["input_ids"], golden["attention_mask"], prefix)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  assert shardings["decoder"]["layers_0"]["self_attention"]["key"]["kernel"].spec == \
      jax.sharding.PartitionSpec("fsdp", "model")


def test_config_validation():
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
    llama.get_config("tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="RopeScaling.type='dynamic'"):
    llama.RopeScaling("dynamic", 2.0)
  assert llama.get_config("llama2_7b").num_layers == 32
