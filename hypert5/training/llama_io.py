"""Llama checkpoints and prefixes in and out: Hugging Face `LlamaForCausalLM` directories and
PEFT prefix-tuning adapters.

Names: ours (hypert5/models/llama.py, T5X style) <-> Hugging Face
  token_embedder/embedding                          model.embed_tokens.weight
  decoder/layers_i/pre_self_attention_layer_norm/scale  model.layers.i.input_layernorm.weight
  decoder/layers_i/self_attention/{query,key,value,out}/kernel
                                                    model.layers.i.self_attn.{q,k,v,o}_proj.weight
  decoder/layers_i/pre_mlp_layer_norm/scale         model.layers.i.post_attention_layernorm.weight
  decoder/layers_i/mlp/{wi_0,wi_1,wo}/kernel        model.layers.i.mlp.{gate,up,down}_proj.weight
  decoder/decoder_norm/scale                        model.norm.weight
  decoder/logits_dense/kernel                       lm_head.weight (absent when tied)
Every Linear weight is transposed ([out, in] in torch). q/k need no permutation: our rotary
embedding uses HF's rotate_half layout.

PEFT prefix tuning (peft 0.21, read from peft_model.get_prompt and
utils/other._prepare_prompt_learning_config): `adapter_model.safetensors` holds one tensor,
`prompt_embeddings` [num_virtual_tokens, num_layers * 2 * token_dim] with token_dim =
num_key_value_heads * head_dim (peft sets num_attention_heads to the kv heads for GQA
models). Row p reshapes to [num_layers * 2, kv_heads, head_dim], index 2*layer is layer's
key, 2*layer + 1 its value. PEFT hands these to the model as a DynamicCache, i.e. as keys
*already rotated* (HF caches keys after RoPE) at cache positions 0..P-1, and the input tokens
then get positions P, P+1, ... (transformers derives position_ids from the cache length).
Our Prefix keeps keys un-rotated and rotates them at 0..P-1 inside attention, so the
exporter rotates key p by position p and the importer rotates it back; values are stored
as they are. Only `prefix_projection=False` adapters hold the prefix itself (with a
projection they hold an MLP's weights), so only those are read.

Generic Prefix files (safetensors / Orbax) are peft_io.save_peft_safetensors /
save_peft_orbax: they store our un-rotated convention as is.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util
from flax.core import meta, unfreeze

from hypert5.models import llama, peft as peft_lib
from hypert5.models.llama import LlamaConfig, RopeScaling
from hypert5.training.model_io import CheckpointError, write_dir_atomically

Params = dict[str, Any]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# --------------------------------------------------------------------------- layout


def layout(c: LlamaConfig) -> list[tuple[str, str, bool, tuple[int, ...]]]:
  """(our path, HF name, transposed, our shape) for every parameter of an unscanned Llama."""
  d, f = c.d_model, c.d_ff
  out = [("token_embedder/embedding", "model.embed_tokens.weight", False, (c.vocab_size, d))]
  for i in range(c.num_layers):
    ours, hf = f"decoder/layers_{i}", f"model.layers.{i}"
    out.append((f"{ours}/pre_self_attention_layer_norm/scale", f"{hf}.input_layernorm.weight",
                False, (d,)))
    for o, x, shape in (("query", "q", (d, c.inner_dim)), ("key", "k", (d, c.kv_dim)),
                        ("value", "v", (d, c.kv_dim)), ("out", "o", (c.inner_dim, d))):
      out.append((f"{ours}/self_attention/{o}/kernel", f"{hf}.self_attn.{x}_proj.weight", True,
                  shape))
    out.append((f"{ours}/pre_mlp_layer_norm/scale", f"{hf}.post_attention_layernorm.weight",
                False, (d,)))
    for o, x, shape in (("wi_0", "gate", (d, f)), ("wi_1", "up", (d, f)), ("wo", "down", (f, d))):
      out.append((f"{ours}/mlp/{o}/kernel", f"{hf}.mlp.{x}_proj.weight", True, shape))
  out.append(("decoder/decoder_norm/scale", "model.norm.weight", False, (d,)))
  if not c.tie_embeddings:
    out.append(("decoder/logits_dense/kernel", "lm_head.weight", True, (d, c.vocab_size)))
  return out


def _describe(c: LlamaConfig) -> str:
  return (f"vocab_size={c.vocab_size}, d_model={c.d_model}, d_ff={c.d_ff}, "
          f"num_heads={c.num_heads}, num_kv_heads={c.num_kv_heads}, head_dim={c.head_dim}, "
          f"num_layers={c.num_layers}, tie_embeddings={c.tie_embeddings}")


# --------------------------------------------------------------------------- configs

_HF_DEFAULTS = dict(  # transformers.LlamaConfig defaults, for config.json files that omit one
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1,
    eos_token_id=2, pad_token_id=None)


def _rope(hf: Mapping[str, Any], source: str) -> tuple[float, RopeScaling | None]:
  """transformers 5 `rope_parameters`, or 4.x `rope_theta` + `rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  legacy = dict(hf.get("rope_scaling") or {})
  theta = float(params.get("rope_theta", hf.get("rope_theta", _HF_DEFAULTS["rope_theta"])))
  spec = params if (params.get("rope_type") or params.get("type")) else legacy
  rope_type = spec.get("rope_type", spec.get("type", "default"))
  if rope_type in (None, "default"):
    return theta, None
  if rope_type not in llama.ROPE_TYPES:
    raise CheckpointError(
        f"{source}: rope type {rope_type!r} is not supported; supported: 'default', "
        f"{', '.join(repr(t) for t in llama.ROPE_TYPES)}. Dynamic / YaRN / LongRoPE scaling "
        "would change the positions silently, so the checkpoint is refused.")
  if rope_type == "linear":
    return theta, RopeScaling("linear", float(spec["factor"]))
  try:
    return theta, RopeScaling(
        "llama3", float(spec["factor"]), float(spec["low_freq_factor"]),
        float(spec["high_freq_factor"]),
        int(spec.get("original_max_position_embeddings",
                     hf.get("max_position_embeddings", 8192))))
  except KeyError as e:
    raise CheckpointError(f"{source}: llama3 rope scaling needs factor, low_freq_factor and "
                          f"high_freq_factor; {e} is missing") from e


def hf_config_to_llama_config(hf: Mapping[str, Any], *, source: str = "config.json") -> LlamaConfig:
  """A transformers LlamaConfig dict (config.json) -> our LlamaConfig."""
  if hf.get("model_type", "llama") != "llama":
    raise CheckpointError(f"{source}: model_type={hf.get('model_type')!r}; only 'llama' "
                          "checkpoints load as hypert5 Llama models.")
  g = lambda k: hf.get(k, _HF_DEFAULTS.get(k))  # noqa: E731
  for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
    if hf.get(key, want) != want:
      raise CheckpointError(f"{source}: {key}={hf[key]!r}; hypert5's Llama supports only "
                            f"{key}={want!r} (the Llama architecture).")
  heads = g("num_attention_heads")
  theta, scaling = _rope(hf, source)
  eos = g("eos_token_id")
  return LlamaConfig(
      vocab_size=g("vocab_size"), d_model=g("hidden_size"), d_ff=g("intermediate_size"),
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or g("hidden_size") // heads,
      num_layers=g("num_hidden_layers"), rope_theta=theta, rope_scaling=scaling,
      max_position_embeddings=g("max_position_embeddings"),
      tie_embeddings=bool(g("tie_word_embeddings")), layer_norm_eps=float(g("rms_norm_eps")),
      bos_token_id=g("bos_token_id"),
      eos_token_id=eos[0] if isinstance(eos, list) else eos,
      pad_token_id=g("pad_token_id"))


def llama_config_to_hf_config(c: LlamaConfig) -> dict[str, Any]:
  """Our LlamaConfig -> a transformers LlamaConfig dict; rope written in both the 4.x
  (rope_theta / rope_scaling) and 5.x (rope_parameters) forms."""
  rope = {"rope_type": "default", "rope_theta": c.rope_theta}
  legacy = None
  if c.rope_scaling is not None:
    s = c.rope_scaling
    legacy = {"rope_type": s.type, "factor": s.factor}
    if s.type == "llama3":
      legacy.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    rope = {**legacy, "rope_theta": c.rope_theta}
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
      "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "hidden_act": "silu",
      "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.layer_norm_eps,
      "rope_theta": c.rope_theta, "rope_scaling": legacy, "rope_parameters": rope,
      "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
      "attention_dropout": 0.0, "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
      "pad_token_id": c.pad_token_id, "use_cache": True,
  }


# --------------------------------------------------------------------------- scan layout


def stack_layers(params: Params, config: LlamaConfig) -> Params:
  """`decoder/layers_{i}/…` -> `decoder/layers/…` with a leading layer axis (scan_layers)."""
  dec = dict(params["decoder"])
  names = [f"layers_{i}" for i in range(config.num_layers)]
  if "layers" in dec or any(n not in dec for n in names):
    raise CheckpointError(f"stack_layers: params['decoder'] should hold layers_0…layers_"
                          f"{config.num_layers - 1} and no 'layers'; it holds {sorted(dec)}")
  trees = [dec.pop(n) for n in names]
  xp = jax.numpy if isinstance(jax.tree.leaves(trees)[0], jax.Array) else np
  dec["layers"] = jax.tree.map(lambda *xs: xp.stack(xs), *trees)
  return {**params, "decoder": dec}


def unstack_layers(params: Params, config: LlamaConfig) -> Params:
  dec = dict(params["decoder"])
  if "layers" not in dec:
    raise CheckpointError(f"unstack_layers: params['decoder'] has no 'layers' (keys "
                          f"{sorted(dec)}); pass scanned params")
  stacked = dec.pop("layers")
  for i in range(config.num_layers):
    dec[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  return {**params, "decoder": dec}


# --------------------------------------------------------------------------- loading


def _weight_files(path: str) -> list[str]:
  if os.path.exists(os.path.join(path, "model.safetensors")):
    return ["model.safetensors"]
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    try:
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e!r})") from e
    for name in files:
      if not os.path.exists(os.path.join(path, name)):
        raise CheckpointError(f"{os.path.join(path, name)}: shard listed in {index} is "
                              "missing; download it again.")
    return files
  if any(os.path.exists(os.path.join(path, n))
         for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
    raise CheckpointError(
        f"{path}: PyTorch pickles are not read (torch is not a runtime dependency). Convert "
        "once where torch is installed: python -c \"import transformers as t; "
        f"t.LlamaForCausalLM.from_pretrained('{path}').save_pretrained('OUT_DIR', "
        "safe_serialization=True)\" and load OUT_DIR.")
  raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json "
                        f"(found: {sorted(os.listdir(path))[:20]})")


def load_llama(path: str | os.PathLike, dtype: str | None = "float32", *,
               config: LlamaConfig | str | None = None,
               config_overrides: Mapping[str, Any] | None = None) -> tuple[LlamaConfig, Params]:
  """Loads a Hugging Face LlamaForCausalLM directory (config.json + model.safetensors or a
  sharded index; local) as (LlamaConfig, params of numpy arrays).

  `config` (a LlamaConfig or a size name) replaces config.json; `config_overrides` replaces
  fields (e.g. {"scan_layers": True, "dtype": "bfloat16"}; with scan_layers the layers come
  back stacked). dtype casts every parameter (None keeps the stored dtypes). Raises
  CheckpointError naming the file, parameter and shapes on any mismatch.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(path):
    path = os.path.dirname(path)
  cfg_file = os.path.join(path, "config.json")
  if not os.path.exists(cfg_file):
    raise CheckpointError(f"{cfg_file}: missing; pass a Hugging Face LlamaForCausalLM "
                          "directory (config.json + model.safetensors).")
  if isinstance(config, str):
    config = llama.get_config(config)
  if config is None:
    try:
      with open(cfg_file) as f:
        config = hf_config_to_llama_config(json.load(f), source=cfg_file)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{cfg_file}: not valid JSON ({e}); re-download it.") from e
  if config_overrides:
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(config_overrides) - fields)
    if unknown:
      raise CheckpointError(f"{cfg_file}: config_overrides has unknown LlamaConfig field(s) "
                            f"{unknown}; known: {sorted(fields)}")
    config = config.replace(**config_overrides)

  files = _weight_files(path)
  flat = {}
  with contextlib.ExitStack() as stack:
    handles = {}
    for name in files:
      f = stack.enter_context(safetensors.safe_open(os.path.join(path, name), framework="numpy"))
      handles.update({k: (f, name) for k in f.keys()})
    where = lambda k: os.path.join(path, handles[k][1] if k in handles else files[0])  # noqa: E731
    lay = layout(config)
    for ours, hf, transpose, shape in lay:
      want = shape[::-1] if transpose else shape
      if hf not in handles:
        hint = (" The config says the output embedding is separate (tie_word_embeddings="
                "false); if the checkpoint ties it, set tie_word_embeddings=true."
                if hf == "lm_head.weight" else "")
        raise CheckpointError(
            f"{where(hf)}: tensor {hf!r} (our {ours!r}, shape {want}) is missing; config: "
            f"{_describe(config)}.{hint} Fix config.json or pass config= / config_overrides=.")
      got = tuple(handles[hf][0].get_slice(hf).get_shape())
      if got != want:
        raise CheckpointError(
            f"{where(hf)}: tensor {hf!r} (our {ours!r}) has shape {got} but the config "
            f"expects {want} (HF stores Linear weights [out, in]); config: {_describe(config)}."
            " Fix config.json or pass config= / config_overrides=.")
      x = handles[hf][0].get_tensor(hf)
      x = np.ascontiguousarray(x.T if transpose else x)
      flat[ours] = x if dtype is None else x.astype(np.dtype(jax.numpy.dtype(dtype)), copy=False)
    known = {hf for _, hf, _, _ in lay}
    ignored = {"lm_head.weight"} if config.tie_embeddings else set()
    extra = sorted(k for k in set(handles) - known - ignored if not k.endswith("rotary_emb.inv_freq"))
    if extra:
      raise CheckpointError(f"{where(extra[0])}: {len(extra)} tensor(s) the config does not use, "
                            f"e.g. {extra[:4]}; config: {_describe(config)}.")
    if config.tie_embeddings and "lm_head.weight" in handles and not np.array_equal(
        handles["lm_head.weight"][0].get_tensor("lm_head.weight"),
        handles["model.embed_tokens.weight"][0].get_tensor("model.embed_tokens.weight")):
      raise CheckpointError(f"{where('lm_head.weight')}: lm_head.weight differs from "
                            "model.embed_tokens.weight but tie_word_embeddings=true; set it "
                            "to false to load a separate output embedding.")
  params = traverse_util.unflatten_dict(flat, sep="/")
  if config.scan_layers:
    params = stack_layers(params, config)
  return config, params


# --------------------------------------------------------------------------- saving


def _plain(params: Params) -> Params:
  params = unfreeze(meta.unbox(params))
  return dict(params["params"]) if set(params) == {"params"} else params


def _write_json(obj, file: str) -> None:
  with open(file, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def save_hf_llama(config: LlamaConfig, params: Params, path: str | os.PathLike, *,
                  overwrite: bool = False) -> None:
  """Writes a LlamaForCausalLM directory (config.json + model.safetensors), atomically.

  Tensors keep the dtype of `params` (scanned or not, boxed or not).
  """
  path = os.fspath(path)
  params = _plain(params)
  if "layers" in params.get("decoder", {}):
    params = unstack_layers(params, config)
  flat = traverse_util.flatten_dict(params, sep="/")
  tensors = {}
  for ours, hf, transpose, shape in layout(config):
    if ours not in flat or tuple(np.shape(flat[ours])) != shape:
      got = tuple(np.shape(flat[ours])) if ours in flat else "missing"
      raise CheckpointError(f"save_hf_llama({path!r}): parameter {ours!r} is {got}, expected "
                            f"{shape} for config {_describe(config)}")
    x = np.asarray(flat[ours])
    tensors[hf] = np.ascontiguousarray(x.T if transpose else x)
  hf_config = llama_config_to_hf_config(config)
  hf_config["torch_dtype"] = str(tensors["model.embed_tokens.weight"].dtype)

  def write(tmp):
    _write_json(hf_config, os.path.join(tmp, "config.json"))
    # format=pt: transformers refuses safetensors files without a known format tag.
    safetensors.numpy.save_file(tensors, os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt"})
  write_dir_atomically(path, write, overwrite, "save_hf_llama")


# --------------------------------------------------------------------------- PEFT prefix


def _rotate(x: np.ndarray, config: LlamaConfig, sign: float) -> np.ndarray:
  """Rotates x [layers, P, kv_heads, head_dim] by RoPE at positions 0..P-1 (sign -1: back)."""
  p = x.shape[1]
  freqs = np.arange(p, dtype=np.float32)[:, None] * llama.rope_inv_freq(config)
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = np.cos(emb)[None, :, None], sign * np.sin(emb)[None, :, None]
  half = x.shape[-1] // 2
  rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos + rot * sin).astype(np.float32)


def save_peft_prefix(prefix: peft_lib.Prefix, config: LlamaConfig,
                     adapter_dir: str | os.PathLike, *,
                     base_model_name_or_path: str | None = None, overwrite: bool = True) -> None:
  """Writes one task's Prefix (batch 1, kind "decoder_self") as a PEFT prefix-tuning adapter
  (PREFIX_TUNING, CAUSAL_LM, prefix_projection=False) for LlamaForCausalLM; keys are rotated
  to PEFT's convention (see the module docstring)."""
  adapter_dir = os.fspath(adapter_dir)
  if set(prefix.keys) != {llama.PREFIX_KIND}:
    raise ValueError(f"save_peft_prefix: a Llama prefix has the one kind "
                     f"{llama.PREFIX_KIND!r}; got {sorted(prefix.keys)}")
  keys = np.asarray(prefix.keys[llama.PREFIX_KIND], np.float32)
  values = np.asarray(prefix.values[llama.PREFIX_KIND], np.float32)
  want = (1, config.num_layers, keys.shape[2], config.num_kv_heads, config.head_dim)
  if keys.shape != want or values.shape != want:
    raise ValueError(f"save_peft_prefix: keys {keys.shape} / values {values.shape}; expected "
                     f"{want} = [batch 1, layers, P, kv_heads, head_dim]. Select one task's "
                     "row with jax.tree.map(lambda x: x[i:i+1], prefix).")
  p = keys.shape[2]
  kv = np.stack([_rotate(keys[0], config, 1.0), values[0]], axis=1)  # [L, 2, P, kvh, hd]
  emb = np.ascontiguousarray(kv.transpose(2, 0, 1, 3, 4).reshape(p, -1))
  acfg = {
      "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": p,
      "token_dim": config.kv_dim, "num_transformer_submodules": 1,
      "num_attention_heads": config.num_kv_heads, "num_layers": config.num_layers,
      "encoder_hidden_size": config.kv_dim, "prefix_projection": False,
      "inference_mode": True, "base_model_name_or_path": base_model_name_or_path,
      "revision": None, "modules_to_save": None, "init_weights": None, "auto_mapping": None,
  }

  def write(tmp):
    _write_json(acfg, os.path.join(tmp, ADAPTER_CONFIG))
    safetensors.numpy.save_file({"prompt_embeddings": emb}, os.path.join(tmp, ADAPTER_WEIGHTS),
                                metadata={"format": "pt"})
  write_dir_atomically(adapter_dir, write, overwrite, "save_peft_prefix")


def load_peft_prefix(adapter_dir: str | os.PathLike, config: LlamaConfig) -> peft_lib.Prefix:
  """Reads a PEFT prefix-tuning adapter of a LlamaForCausalLM into a Prefix (batch 1,
  kind "decoder_self", keys un-rotated)."""
  adapter_dir = os.fspath(adapter_dir)
  cfg_path, w_path = (os.path.join(adapter_dir, n) for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
  for file in (cfg_path, w_path):
    if not os.path.exists(file):
      raise CheckpointError(f"{file}: missing; a PEFT prefix-tuning adapter directory needs "
                            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
  with open(cfg_path) as f:
    acfg = json.load(f)
  if acfg.get("peft_type") != "PREFIX_TUNING":
    raise CheckpointError(f"{cfg_path}: peft_type={acfg.get('peft_type')!r}; expected "
                          "PREFIX_TUNING")
  if acfg.get("prefix_projection"):
    raise CheckpointError(f"{cfg_path}: prefix_projection=true stores an MLP, not the prefix; "
                          "re-save the adapter from PEFT with inference_mode so "
                          "prompt_embeddings holds the projected prefix, or set "
                          "prefix_projection=false when training it.")
  if acfg.get("num_transformer_submodules", 1) != 1:
    raise CheckpointError(f"{cfg_path}: num_transformer_submodules="
                          f"{acfg['num_transformer_submodules']}; a decoder-only adapter has 1")
  emb = safetensors.numpy.load_file(w_path).get("prompt_embeddings")
  p = int(acfg["num_virtual_tokens"])
  want = (p, config.num_layers * 2 * config.kv_dim)
  if emb is None or emb.shape != want:
    got = None if emb is None else emb.shape
    raise CheckpointError(f"{w_path}: prompt_embeddings is {got}; expected {want} = "
                          "[num_virtual_tokens, layers * 2 * kv_heads * head_dim] for "
                          f"{_describe(config)}")
  kv = emb.astype(np.float32).reshape(p, config.num_layers, 2, config.num_kv_heads,
                                      config.head_dim).transpose(1, 2, 0, 3, 4)
  keys = _rotate(kv[:, 0], config, -1.0)[None]
  values = np.ascontiguousarray(kv[:, 1])[None]
  return peft_lib.Prefix(keys={llama.PREFIX_KIND: keys}, values={llama.PREFIX_KIND: values})
