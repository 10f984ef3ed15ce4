"""Checkpoint import/export: HF safetensors and T5X round trips, scan layout, errors."""
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from flax import serialization, traverse_util

from hypert5.models.configs import get_config
from hypert5.training import model_io
from hypert5.training.model_io import CheckpointError, load_t5, save_hf_t5

GOLDENS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "goldens")

CONFIGS = {
    "v1_0": get_config("tiny", mlp_activations=("relu",), tie_embeddings=True),
    "v1_1": get_config("tiny"),
}


def hf_shapes(c):
  """HF T5ForConditionalGeneration state-dict names and shapes, written out independently
  of model_io's table so a wrong name there cannot pass by construction."""
  d, f, i, h, b = c.d_model, c.d_ff, c.num_heads * c.head_dim, c.num_heads, 32
  s = {"shared.weight": (c.vocab_size, d)}

  def ffn(p):
    for wi in (("wi_0", "wi_1") if c.gated_mlp else ("wi",)):
      s[f"{p}.{wi}.weight"] = (f, d)
    s[f"{p}.wo.weight"] = (d, f)

  def attn(p):
    for x in "qkv":
      s[f"{p}.{x}.weight"] = (i, d)
    s[f"{p}.o.weight"] = (d, i)

  for n in range(c.num_encoder_layers):
    p = f"encoder.block.{n}.layer"
    s[f"{p}.0.layer_norm.weight"] = (d,)
    attn(f"{p}.0.SelfAttention")
    s[f"{p}.1.layer_norm.weight"] = (d,)
    ffn(f"{p}.1.DenseReluDense")
  for n in range(c.num_decoder_layers):
    p = f"decoder.block.{n}.layer"
    s[f"{p}.0.layer_norm.weight"] = (d,)
    attn(f"{p}.0.SelfAttention")
    s[f"{p}.1.layer_norm.weight"] = (d,)
    attn(f"{p}.1.EncDecAttention")
    s[f"{p}.2.layer_norm.weight"] = (d,)
    ffn(f"{p}.2.DenseReluDense")
  for stack in ("encoder", "decoder"):
    s[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (b, h)
    s[f"{stack}.final_layer_norm.weight"] = (d,)
  if not c.tie_embeddings:
    s["lm_head.weight"] = (c.vocab_size, d)
  return s


def hf_config_json(c):
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.head_dim, "d_ff": c.d_ff,
      "num_heads": c.num_heads, "num_layers": c.num_encoder_layers,
      "num_decoder_layers": c.num_decoder_layers,
      "feed_forward_proj": "gated-gelu" if c.gated_mlp else "relu",
      "tie_word_embeddings": c.tie_embeddings, "relative_attention_num_buckets": 32,
      "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
      "dropout_rate": 0.1, "n_positions": 512, "transformers_version": "4.46.0",
  }


def write_fake_hf(path, c, seed=0, dtype=np.float32, extra=None, drop=(), cfg_edit=None):
  rng = np.random.default_rng(seed)
  tensors = {k: rng.standard_normal(s).astype(dtype) for k, s in hf_shapes(c).items()}
  tensors.update(extra or {})
  for k in drop:
    del tensors[k]
  os.makedirs(path, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"),
                              metadata={"format": "pt"})
  cfg = hf_config_json(c)
  cfg.update(cfg_edit or {})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  return tensors


def read_safetensors(path):
  with safetensors.safe_open(path, framework="numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def flat(params):
  return traverse_util.flatten_dict(params, sep="/")


def assert_same(a, b):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# --------------------------------------------------------------------------- HF


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_hf_round_trip_is_bit_exact(tmp_path, variant):
  c = CONFIGS[variant]
  src = write_fake_hf(tmp_path / "hf", c)
  config, params = load_t5(tmp_path / "hf")

  assert config == c.replace(dropout_rate=0.1)
  assert {k: v.shape for k, v in flat(params).items()} == model_io.param_shapes(config)
  q = params["encoder"]["layers_1"]["attention"]["query"]["kernel"]
  np.testing.assert_array_equal(q, src["encoder.block.1.layer.0.SelfAttention.q.weight"].T)
  np.testing.assert_array_equal(
      params["decoder"]["relpos_bias"]["rel_embedding"],
      src["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T)
  assert ("logits_dense" in params["decoder"]) == (not c.tie_embeddings)

  save_hf_t5(config, params, tmp_path / "out")
  out = read_safetensors(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(out) == sorted(src)
  for k in src:
    assert out[k].dtype == src[k].dtype
    np.testing.assert_array_equal(out[k], src[k], err_msg=k)
  with safetensors.safe_open(str(tmp_path / "out" / "model.safetensors"), "numpy") as f:
    assert f.metadata() == {"format": "pt"}

  hf = json.load(open(tmp_path / "out" / "config.json"))
  want = {k: v for k, v in hf_config_json(c).items()
          if k not in ("n_positions", "transformers_version")}
  assert {k: hf[k] for k in want} == want
  assert hf["is_encoder_decoder"] and hf["decoder_start_token_id"] == 0
  assert (hf["pad_token_id"], hf["eos_token_id"]) == (0, 1)
  assert model_io.hf_config_to_t5config(hf) == config
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left


def test_hf_duplicates_and_dtype(tmp_path):
  c = CONFIGS["v1_0"]
  rng = np.random.default_rng(1)
  emb = rng.standard_normal((c.vocab_size, c.d_model)).astype(ml_dtypes.bfloat16)
  src = write_fake_hf(tmp_path / "hf", c, dtype=ml_dtypes.bfloat16, extra={
      "shared.weight": emb, "encoder.embed_tokens.weight": emb,
      "decoder.embed_tokens.weight": emb, "lm_head.weight": emb})
  _, params = load_t5(tmp_path / "hf", dtype=None)
  assert params["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16
  _, p32 = load_t5(tmp_path / "hf")
  assert p32["token_embedder"]["embedding"].dtype == np.float32
  config, pbf = load_t5(tmp_path / "hf", dtype="bfloat16")
  save_hf_t5(config, pbf, tmp_path / "out")
  out = read_safetensors(str(tmp_path / "out" / "model.safetensors"))
  # Tied: transformers re-ties the copies, so only shared.weight is written.
  assert sorted(out) == sorted(set(src) - set(model_io._HF_TIED) - {"lm_head.weight"})
  np.testing.assert_array_equal(out["shared.weight"], emb)


def test_hf_transformers5_tie_flags(tmp_path):
  # transformers 5 writes tie_word_embeddings=true for every T5; scale_decoder_outputs and
  # the presence of lm_head.weight say what the model really is.
  c = CONFIGS["v1_1"]
  src = write_fake_hf(tmp_path / "v5", c, cfg_edit={"tie_word_embeddings": True,
                                                   "scale_decoder_outputs": False})
  config, params = load_t5(tmp_path / "v5")
  assert not config.tie_embeddings
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], src["lm_head.weight"].T)
  save_hf_t5(config, params, tmp_path / "out")
  hf = json.load(open(tmp_path / "out" / "config.json"))
  assert hf["tie_word_embeddings"] is False and hf["scale_decoder_outputs"] is False

  # A head that differs from the embedding cannot be combined with tied-style scaling.
  write_fake_hf(tmp_path / "bad", c, cfg_edit={"scale_decoder_outputs": True})
  with pytest.raises(CheckpointError, match=r"model\.safetensors: 'lm_head\.weight' differs "
                     r"from 'shared\.weight' but the config scales the decoder output"):
    load_t5(tmp_path / "bad")


def test_hf_sharded(tmp_path):
  c = CONFIGS["v1_1"]
  src = write_fake_hf(tmp_path / "one", c)
  _, want = load_t5(tmp_path / "one")
  d = tmp_path / "sharded"
  os.makedirs(d)
  names = sorted(src)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for fname, keys in shards.items():
    safetensors.numpy.save_file({k: src[k] for k in keys}, str(d / fname))
  json.dump({"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}},
            open(d / "model.safetensors.index.json", "w"))
  json.dump(hf_config_json(c), open(d / "config.json", "w"))
  assert_same(load_t5(d)[1], want)

  os.remove(d / "model-00002-of-00002.safetensors")
  with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: shard listed in .*"
                     r"model\.safetensors\.index\.json is missing"):
    load_t5(d)


# --------------------------------------------------------------------------- T5X


def random_params(c, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict(
      {k: rng.standard_normal(s).astype(dtype) for k, s in model_io.param_shapes(c).items()},
      sep="/")


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_t5x_round_trip_infers_config(tmp_path, variant):
  c = CONFIGS[variant]
  params = random_params(c)
  model_io.write_t5x_checkpoint(params, tmp_path / "checkpoint_100", step=100)
  config, loaded = load_t5(tmp_path / "checkpoint_100")
  assert config == c
  assert_same(loaded, params)
  # Also through the msgpack file itself, and with an explicit size name.
  assert_same(load_t5(tmp_path / "checkpoint_100" / "checkpoint", config=c)[1], params)


def test_t5x_on_disk_layout(tmp_path):
  params = random_params(CONFIGS["v1_1"], dtype=ml_dtypes.bfloat16)
  ckpt = tmp_path / "checkpoint_7"
  model_io.write_t5x_checkpoint(params, ckpt, step=7)
  contents = serialization.msgpack_restore(open(ckpt / "checkpoint", "rb").read())
  assert contents["version"] == 3
  assert int(contents["optimizer"]["state"]["step"]) == 7
  spec = contents["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert spec["driver"] == "zarr" and spec["dtype"] == "bfloat16"
  assert spec["kvstore"]["driver"] == "file"
  assert spec["kvstore"]["path"].rstrip("/") == "target.encoder.layers_0.attention.query.kernel"
  assert spec["metadata"]["shape"] == [64, 64] and spec["metadata"]["compressor"]["id"] == "gzip"
  zarray = json.load(open(ckpt / "target.encoder.layers_0.attention.query.kernel" / ".zarray"))
  assert zarray["dtype"] == "bfloat16" and zarray["compressor"]["id"] == "gzip"
  assert zarray["shape"] == [64, 64] and zarray["zarr_format"] == 2
  config, loaded = load_t5(ckpt, dtype=None)
  assert_same(loaded, params)


def test_t5x_chunk_shape_follows_t5x():
  assert model_io._chunk_shape((32128, 768), 4) == [16064, 768]  # 98 MiB → ≤ 64 MiB
  assert model_io._chunk_shape((64, 64), 4) == [64, 64]


def test_t5x_inline_leaves_old_specs_and_optimizer_state(tmp_path):
  c = CONFIGS["v1_0"]
  params = random_params(c)
  ckpt = tmp_path / "checkpoint_1"
  model_io.write_t5x_checkpoint(params, ckpt)
  contents = serialization.msgpack_restore(open(ckpt / "checkpoint", "rb").read())
  target = contents["optimizer"]["target"]
  # t5x writes unpartitioned leaves into the msgpack itself.
  target["encoder"]["encoder_norm"]["scale"] = params["encoder"]["encoder_norm"]["scale"]
  # A gcs-written spec (dummy bucket) and a tensorstore<0.1.14 spec with a top-level path.
  q = target["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  q["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                  "path": "target.encoder.layers_0.attention.query.kernel"}
  k = target["encoder"]["layers_0"]["attention"]["key"]["kernel"]
  del k["kvstore"]
  k["path"], k["kvstore"] = "target.encoder.layers_0.attention.key.kernel", {"driver": "file"}
  # Adafactor slots live under state/param_states and are never opened.
  contents["optimizer"]["state"]["param_states"] = {"encoder": {"v_row": {
      "driver": "zarr", "kvstore": {"driver": "file", "path": "state.param_states.nope"}}}}
  open(ckpt / "checkpoint", "wb").write(serialization.msgpack_serialize(contents))
  config, loaded = load_t5(ckpt)
  assert config == c
  assert_same(loaded, params)


# --------------------------------------------------------------------------- scan


def test_stack_unstack_and_scanned_load_save(tmp_path):
  c = CONFIGS["v1_1"]
  src = write_fake_hf(tmp_path / "hf", c)
  config, params = load_t5(tmp_path / "hf")
  stacked = model_io.stack_layers(params, config)
  assert "layers_0" not in stacked["encoder"]
  assert stacked["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, 64, 128)
  assert stacked["decoder"]["layers"]["encoder_decoder_attention"]["out"]["kernel"].shape == (2, 64, 64)
  assert_same(model_io.unstack_layers(stacked, config), params)

  sconfig, sparams = load_t5(tmp_path / "hf", config_overrides={"scan_layers": True})
  assert sconfig.scan_layers
  assert_same(sparams, stacked)
  save_hf_t5(sconfig, sparams, tmp_path / "out")
  out = read_safetensors(str(tmp_path / "out" / "model.safetensors"))
  for key in src:
    np.testing.assert_array_equal(out[key], src[key], err_msg=key)

  with pytest.raises(CheckpointError, match="stack_layers: params\\['encoder'\\] should hold"):
    model_io.stack_layers(stacked, config)
  with pytest.raises(CheckpointError, match="leading layer axis of 3"):
    model_io.unstack_layers(stacked, config.replace(num_encoder_layers=3))


def test_config_mapping():
  hf = {"model_type": "t5", "feed_forward_proj": "gated-gelu", "d_model": 768, "d_ff": 2048,
        "num_heads": 12, "d_kv": 64, "num_layers": 12, "vocab_size": 32128,
        "tie_word_embeddings": False}
  c = model_io.hf_config_to_t5config(hf)
  assert c.mlp_activations == ("gelu", "linear") and not c.tie_embeddings
  assert c.num_decoder_layers == 12 and c.head_dim == 64
  v10 = model_io.hf_config_to_t5config({"feed_forward_proj": "relu"})
  assert v10.mlp_activations == ("relu",) and v10.tie_embeddings  # HF default: tied
  with pytest.raises(CheckpointError, match="feed_forward_proj='gated-silu'"):
    model_io.hf_config_to_t5config({"feed_forward_proj": "gated-silu"}, source="x/config.json")
  with pytest.raises(CheckpointError, match="no exact Hugging Face equivalent"):
    model_io.t5config_to_hf_config(get_config("tiny", mlp_activations=("gelu",)))


# --------------------------------------------------------------------------- errors


def test_error_shape_mismatch_names_file_param_shapes(tmp_path):
  write_fake_hf(tmp_path / "hf", CONFIGS["v1_1"], cfg_edit={"d_ff": 96})
  with pytest.raises(CheckpointError) as e:
    load_t5(tmp_path / "hf")
  msg = str(e.value)
  assert str(tmp_path / "hf" / "model.safetensors") in msg
  assert "'encoder/layers_0/mlp/wi_0/kernel'" in msg
  assert "'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'" in msg
  assert "(128, 64) in the checkpoint" in msg and "expects (96, 64)" in msg
  assert "config.json" in msg and "config_overrides" in msg

  model_io.write_t5x_checkpoint(random_params(CONFIGS["v1_1"]), tmp_path / "t5x")
  with pytest.raises(CheckpointError) as e:
    load_t5(tmp_path / "t5x", config="small")
  msg = str(e.value)
  assert str(tmp_path / "t5x" / "target.token_embedder.embedding") in msg
  assert "'target/token_embedder/embedding'" in msg
  assert "(384, 64) in the checkpoint" in msg and "expects (32128, 512)" in msg


def test_error_missing_parameter(tmp_path):
  name = "decoder.block.1.layer.1.EncDecAttention.v.weight"
  write_fake_hf(tmp_path / "hf", CONFIGS["v1_1"], drop=[name])
  with pytest.raises(CheckpointError) as e:
    load_t5(tmp_path / "hf")
  msg = str(e.value)
  assert str(tmp_path / "hf" / "model.safetensors") in msg
  assert "'decoder/layers_1/encoder_decoder_attention/value/kernel'" in msg
  assert repr(name) in msg and "expected shape (64, 64)" in msg and "is missing" in msg

  ckpt = tmp_path / "t5x"
  model_io.write_t5x_checkpoint(random_params(CONFIGS["v1_1"]), ckpt)
  contents = serialization.msgpack_restore(open(ckpt / "checkpoint", "rb").read())
  del contents["optimizer"]["target"]["decoder"]["layers_1"]["mlp"]["wo"]
  open(ckpt / "checkpoint", "wb").write(serialization.msgpack_serialize(contents))
  with pytest.raises(CheckpointError) as e:
    load_t5(ckpt)
  msg = str(e.value)
  assert str(ckpt / "checkpoint") in msg and "'decoder/layers_1/mlp/wo/kernel'" in msg
  assert "'target/decoder/layers_1/mlp/wo/kernel'" in msg and "(128, 64)" in msg


def test_error_unexpected_tensor(tmp_path):
  extra = {"encoder.block.2.layer.0.layer_norm.weight": np.ones(64, np.float32)}
  write_fake_hf(tmp_path / "hf", CONFIGS["v1_1"], extra=extra)
  with pytest.raises(CheckpointError, match=r"1 tensor\(s\) that the config does not use: "
                     r"'encoder\.block\.2\.layer\.0\.layer_norm\.weight'.*num_encoder_layers=2"):
    load_t5(tmp_path / "hf")


def test_error_missing_files(tmp_path):
  with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such file or directory"):
    load_t5(tmp_path / "nope")

  d = tmp_path / "hf"
  write_fake_hf(d, CONFIGS["v1_1"])
  os.remove(d / "model.safetensors")
  with pytest.raises(CheckpointError, match=r"model\.safetensors: missing — .* has config\.json"):
    load_t5(d)
  open(d / "pytorch_model.bin", "wb").write(b"\0")
  with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: PyTorch pickles are not read.*"
                     r"safe_serialization=True"):
    load_t5(d)

  ckpt = tmp_path / "t5x"
  model_io.write_t5x_checkpoint(random_params(CONFIGS["v1_1"]), ckpt)
  victim = ckpt / "target.decoder.layers_0.mlp.wo.kernel"
  for f in os.listdir(victim):
    os.remove(victim / f)
  os.rmdir(victim)
  with pytest.raises(CheckpointError) as e:
    load_t5(ckpt)
  msg = str(e.value)
  assert str(victim) in msg and "'target/decoder/layers_0/mlp/wo/kernel'" in msg
  assert "copy the whole checkpoint_N directory again" in msg


def test_error_unknown_format(tmp_path):
  d = tmp_path / "model_dir"
  os.makedirs(d / "checkpoint_5")
  os.makedirs(d / "checkpoint_12")
  open(d / "notes.txt", "w").write("hi")
  with pytest.raises(CheckpointError) as e:
    load_t5(d)
  msg = str(e.value)
  assert f"{d}: unknown checkpoint format" in msg and "notes.txt" in msg
  assert f"{d}/checkpoint_12" in msg
  with pytest.raises(CheckpointError, match="a file of unknown format"):
    load_t5(d / "notes.txt")
  with pytest.raises(CheckpointError, match="unknown T5Config field"):
    write_fake_hf(tmp_path / "hf", CONFIGS["v1_1"])
    load_t5(tmp_path / "hf", config_overrides={"scan_layer": True})


def test_save_is_atomic_and_refuses_to_clobber(tmp_path, monkeypatch):
  c = CONFIGS["v1_1"]
  params = random_params(c)
  out = tmp_path / "out"
  os.makedirs(out)
  open(out / "tokenizer.json", "w").write("{}")
  with pytest.raises(CheckpointError, match="exists and is not empty; pass overwrite=True"):
    save_hf_t5(c, params, out)

  def crash(*a, **k):
    raise OSError("disk full")

  monkeypatch.setattr(safetensors.numpy, "save_file", crash)
  with pytest.raises(OSError, match="disk full"):
    save_hf_t5(c, params, tmp_path / "fresh")
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no half-written or temp directory
  monkeypatch.undo()

  save_hf_t5(c, params, out, overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["out"]
  bad = dict(params, decoder=dict(params["decoder"]))
  del bad["decoder"]["logits_dense"]
  with pytest.raises(CheckpointError, match=r"params passed to save_hf_t5.*"
                     r"'decoder/logits_dense/kernel'.*is missing"):
    save_hf_t5(c, bad, tmp_path / "x")


# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("variant", ["t5_v1_0", "t5_v1_1"])
def test_real_transformers_goldens(tmp_path, variant):
  d = os.path.join(GOLDENS, variant)
  if not os.path.exists(os.path.join(d, "model.safetensors")):
    pytest.skip(f"{d} not generated yet (tests/make_goldens.py)")
  c = CONFIGS[variant.replace("t5_", "")]
  config, params = load_t5(d)
  assert config == c.replace(dropout_rate=config.dropout_rate)
  assert {k: v.shape for k, v in flat(params).items()} == model_io.param_shapes(c)
  save_hf_t5(config, params, tmp_path / "out")
  golden = read_safetensors(os.path.join(d, "model.safetensors"))
  out = read_safetensors(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(out) == sorted(golden)
  for k in golden:
    assert out[k].dtype == golden[k].dtype
    np.testing.assert_array_equal(out[k], golden[k], err_msg=k)


# --------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("variant", sorted(CONFIGS))
@pytest.mark.parametrize("scan", [False, True])
def test_layout_matches_the_flax_module(variant, scan):
  from flax.core import meta

  from hypert5.models import t5
  c = CONFIGS[variant].replace(scan_layers=scan)
  module = {k: v.shape for k, v in flat(meta.unbox(t5.abstract_params(c))).items()}
  ours = traverse_util.unflatten_dict(
      {k: np.zeros(s, np.float32) for k, s in model_io.param_shapes(c).items()}, sep="/")
  if scan:
    ours = model_io.stack_layers(ours, c)
  assert {k: v.shape for k, v in flat(ours).items()} == module


def test_save_accepts_boxed_wrapped_params(tmp_path):
  from flax import linen as nn
  c = CONFIGS["v1_1"]
  params = random_params(c)
  boxed = {"params": jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), params)}
  save_hf_t5(c, boxed, tmp_path / "out")
  assert_same(load_t5(tmp_path / "out")[1], params)


def test_gcs_paths_map_to_gcs_kvstores():
  d = model_io._Dir("gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000/")
  assert d.kvstore == {"driver": "gcs", "bucket": "t5-data",
                       "path": "pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000/"}
  assert d.child_spec("target.encoder.layers_0.attention.query.kernel")["path"] == (
      "pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000/"
      "target.encoder.layers_0.attention.query.kernel/")
  # t5x's gcs specs carry a dummy bucket and a relative path; only the name is used.
  spec = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                                        "path": "target.decoder.decoder_norm.scale"}}
  assert model_io._t5x_read_spec(d, spec)["kvstore"]["bucket"] == "t5-data"


def test_downstream_checkpoint_loads_in_the_configured_param_dtype(tmp_path):
  """A run's downstream arrives in its param_dtype (as a fresh init would), the dtype its
  checkpoints hold and eval's abstract restore template expects."""
  import flax.linen as nn
  from hypert5 import main, runs
  from hypert5.models import t5
  cfg = get_config("tiny")
  save_hf_t5(cfg, t5.init_params(cfg, jax.random.key(0)), tmp_path / "hf")
  main.parse_gin(["experiments/synthetic_tiny.gin"],
                 [f"MODEL_DIR='{tmp_path / 'run'}'",
                  f"experiment.downstream_checkpoint='{tmp_path / 'hf'}'",
                  "hypert5.get_config.param_dtype='bfloat16'"])
  exp = runs.experiment()
  loaded = runs.load_downstream(exp)
  abstract = nn.unbox(exp.objective.abstract_frozen())
  assert jax.tree.map(lambda x: x.dtype, loaded) == jax.tree.map(lambda x: x.dtype, abstract)
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype(ml_dtypes.bfloat16)}
