"""Pretrained T5 checkpoints in and out: Hugging Face safetensors and T5X (msgpack + zarr).

Our parameter tree uses T5X names (`encoder/layers_0/attention/query/kernel`, …), so a T5X
checkpoint maps one to one and a Hugging Face one by a fixed rename plus a transpose of
every Linear weight ([out, in] in torch, [in, out] here) and of the relative-position table.
`_layout(config)` is the single table both directions and every check are derived from.

T5X on-disk layout (read from google-research/t5x `t5x/checkpoints.py`, the
`Checkpointer` of checkpoint VERSION = 3, used since 2021-06 and by the public T5 v1.1 /
LM-adapted checkpoints under gs://t5-data/pretrained_models/t5x/; the spec serialisation
is orbax's `register_ts_spec_for_serialization`, which t5x registers):

  checkpoint_N/checkpoint    msgpack (flax.serialization) of
                               {"version": 3,
                                "optimizer": {"target": <params tree>,
                                              "state": {"step": …, "param_states": …}}}
                             (version 0 files are a bare flax state dict without the
                             "optimizer" level). Each array leaf is either the array itself
                             (msgpack ext type; t5x does this for unpartitioned leaves) or
                             the JSON of its `tensorstore.Spec`:
                               {"driver": "zarr", "dtype": "float32",
                                "kvstore": {"driver": "file" | "gcs", "path": "target.encoder.layers_0.attention.query.kernel",
                                            ["bucket": "t5x-dummy-bucket"]},
                                "metadata": {"chunks": […], "compressor": {"id": "gzip"}, "shape": […]}}
                             The path is relative to the checkpoint directory (the leaf's
                             "/"-joined tree path with "/" → "."); tensorstore < 0.1.14
                             wrote it as a top-level "path". gcs specs carry a dummy bucket
                             that readers replace.
  checkpoint_N/target.encoder.layers_0.attention.query.kernel/
                             a zarr v2 array: `.zarray` + chunk files; gzip; chunk shape
                             chosen greedily to divide the array and hold ≤ 64 MiB; dtype
                             stored natively (bfloat16 included — VERSION 2 stored it as
                             uint16, which we reinterpret).
  state.param_states.…/      optimizer slots (Adafactor v_row/v_col/…): ignored here.

`load_t5` reads the `checkpoint` file and the zarr arrays through TensorStore kvstores, so
`gs://bucket/...` works as well as local paths. T5X has no config file: dimensions are
inferred from the array shapes (heads from the relative-position table, head_dim from the
query kernel, layers from the `layers_i` count, v1.0/v1.1 from `wi` vs `wi_0`, tying from
`logits_dense`), or taken from `config=`; non-shape fields keep T5Config defaults
(relative_attention_max_distance=128, layer_norm_eps=1e-6).

Hugging Face directories must be local (copy gs:// ones first); weights must be
safetensors — torch is not a runtime dependency, so `pytorch_model.bin` gets an error that
says how to convert it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
import tensorstore as ts
from flax import serialization, traverse_util
from flax.core import meta, unfreeze

from hypert5.models.configs import SIZES, T5Config

Params = dict[str, Any]

T5X_VERSION = 3  # the t5x checkpoint version write_t5x_checkpoint produces
_T5X_CHUNK_BYTES = 64 * 1024 * 1024  # t5x's desired zarr chunk size
_T5X_DUMMY_BUCKET = "t5x-dummy-bucket"


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed, or does not match the config."""


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Param:
  path: str            # ours / T5X, "/"-separated
  hf: str              # Hugging Face state-dict name
  transpose: bool      # HF stores the transpose of ours
  shape: tuple[int, ...]  # our shape

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return self.shape[::-1] if self.transpose else self.shape


def _layout(c: T5Config) -> list[_Param]:
  """Every parameter of an unscanned T5 for config `c`, with its HF name and shape."""
  d, f, inner, h, b = c.d_model, c.d_ff, c.inner_dim, c.num_heads, c.relative_attention_num_buckets
  out = [_Param("token_embedder/embedding", "shared.weight", False, (c.vocab_size, d))]

  def attn(ours, hf):
    for o, x in (("query", "q"), ("key", "k"), ("value", "v")):
      out.append(_Param(f"{ours}/{o}/kernel", f"{hf}.{x}.weight", True, (d, inner)))
    out.append(_Param(f"{ours}/out/kernel", f"{hf}.o.weight", True, (inner, d)))

  def mlp(ours, hf):
    wis = ("wi_0", "wi_1") if c.gated_mlp else ("wi",)
    for wi in wis:
      out.append(_Param(f"{ours}/{wi}/kernel", f"{hf}.{wi}.weight", True, (d, f)))
    out.append(_Param(f"{ours}/wo/kernel", f"{hf}.wo.weight", True, (f, d)))

  def norm(ours, hf):
    out.append(_Param(f"{ours}/scale", f"{hf}.weight", False, (d,)))

  for stack, n in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers)):
    out.append(_Param(f"{stack}/relpos_bias/rel_embedding",
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      True, (h, b)))
    for i in range(n):
      ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      if stack == "encoder":
        norm(f"{ours}/pre_attention_layer_norm", f"{hf}.0.layer_norm")
        attn(f"{ours}/attention", f"{hf}.0.SelfAttention")
        norm(f"{ours}/pre_mlp_layer_norm", f"{hf}.1.layer_norm")
        mlp(f"{ours}/mlp", f"{hf}.1.DenseReluDense")
      else:
        norm(f"{ours}/pre_self_attention_layer_norm", f"{hf}.0.layer_norm")
        attn(f"{ours}/self_attention", f"{hf}.0.SelfAttention")
        norm(f"{ours}/pre_cross_attention_layer_norm", f"{hf}.1.layer_norm")
        attn(f"{ours}/encoder_decoder_attention", f"{hf}.1.EncDecAttention")
        norm(f"{ours}/pre_mlp_layer_norm", f"{hf}.2.layer_norm")
        mlp(f"{ours}/mlp", f"{hf}.2.DenseReluDense")
    norm(f"{stack}/{stack}_norm", f"{stack}.final_layer_norm")
  if not c.tie_embeddings:
    out.append(_Param("decoder/logits_dense/kernel", "lm_head.weight", True, (d, c.vocab_size)))
  return out


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
  """{"encoder/layers_0/attention/query/kernel": shape, …} for the unscanned layout."""
  return {p.path: p.shape for p in _layout(config)}


def _describe(c: T5Config) -> str:
  return (f"vocab_size={c.vocab_size}, d_model={c.d_model}, d_ff={c.d_ff}, "
          f"num_heads={c.num_heads}, head_dim={c.head_dim}, "
          f"num_encoder_layers={c.num_encoder_layers}, num_decoder_layers={c.num_decoder_layers}, "
          f"mlp_activations={c.mlp_activations}, tie_embeddings={c.tie_embeddings}, "
          f"relative_attention_num_buckets={c.relative_attention_num_buckets}")


_FIX = ("make the config describe this checkpoint: fix its config.json, or pass "
        "config= / config_overrides= to load_t5.")


def _check_shapes(layout: list[_Param], found: Mapping[str, tuple[int, ...]], *, kind: str,
                  where, config: T5Config, ignored: frozenset = frozenset()) -> None:
  """Raises CheckpointError for a missing, mis-shaped or unexpected tensor.

  kind: "hf" (found is keyed by HF names, shapes transposed), "t5x" (our names, shown
  as target/…) or "params" (our names). `where(name)` names the file holding `name`
  (`where(None)`: the checkpoint as a whole).
  """
  hf = kind == "hf"
  fix = (_FIX if kind != "params" else
         "pass params made for this config (or the config these params were made with).")
  fix_ = fix[0].upper() + fix[1:]
  for p in layout:
    name, want = (p.hf, p.hf_shape) if hf else (p.path, p.shape)
    ckpt = {"hf": p.hf, "t5x": f"target/{p.path}", "params": p.path}[kind]
    note = " (Hugging Face stores it transposed, [out, in])" if hf and p.transpose else ""
    if name not in found:
      raise CheckpointError(
          f"{where(None)}: parameter {p.path!r} (checkpoint name {ckpt!r}, expected shape "
          f"{want}{note}) is missing; config: {_describe(config)}. If the checkpoint is "
          "another T5 variant (v1.0 relu vs v1.1 gated-gelu, tied vs untied embeddings, "
          f"fewer layers), {fix} If a file is truncated, download it again.")
    if tuple(found[name]) != tuple(want):
      raise CheckpointError(
          f"{where(name)}: parameter {p.path!r} (checkpoint name {ckpt!r}) has shape "
          f"{tuple(found[name])} in the checkpoint but the config expects {tuple(want)}"
          f"{note}; config: {_describe(config)}. {fix_}")
  known = {(p.hf if hf else p.path) for p in layout}
  extra = sorted(set(found) - known - ignored)
  if extra:
    shown = ", ".join(repr(n) for n in extra[:8]) + (" …" if len(extra) > 8 else "")
    raise CheckpointError(
        f"{where(None)}: {len(extra)} tensor(s) that the config does not use: {shown}; "
        f"config: {_describe(config)}. {fix_}")


# --------------------------------------------------------------------------- configs

_HF_DEFAULTS = dict(  # transformers.T5Config defaults, for config.json files that omit a field
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
    tie_word_embeddings=True)
# Only these two: HF's "gated-gelu" is the tanh GELU (gelu_new) T5X uses, while its
# plain "gelu" is the erf GELU, which we would silently compute differently.
_FFN = {"relu": ("relu",), "gated-gelu": ("gelu", "linear")}


def hf_config_to_t5config(hf: Mapping[str, Any], *, source: str = "config.json") -> T5Config:
  """A transformers T5Config dict (config.json) → our T5Config; `source` names it in errors."""
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise CheckpointError(
        f"{source}: model_type={model_type!r}; only 't5' and 'mt5' (same architecture) "
        "checkpoints can be loaded as hypert5 T5 models.")
  g = lambda k: hf.get(k, _HF_DEFAULTS.get(k))  # noqa: E731
  ffn = g("feed_forward_proj")
  if ffn not in _FFN:
    raise CheckpointError(
        f"{source}: feed_forward_proj={ffn!r} is not supported; expected 'relu' (T5 v1.0) "
        "or 'gated-gelu' (T5 v1.1 / LM-adapted / Flan-T5).")
  num_layers = g("num_layers")
  # transformers >= 5 always writes tie_word_embeddings=true for T5 and records the
  # d_model**-0.5 output scaling (what v1.0's tying implies) in scale_decoder_outputs; the
  # head is then lm_head.weight when the file has one. Older configs only have the tie flag.
  scaled = hf.get("scale_decoder_outputs", g("tie_word_embeddings"))
  return T5Config(
      vocab_size=g("vocab_size"), d_model=g("d_model"), d_ff=g("d_ff"),
      num_heads=g("num_heads"), head_dim=g("d_kv"),
      num_encoder_layers=num_layers,
      num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
      mlp_activations=_FFN[ffn], tie_embeddings=bool(scaled),
      relative_attention_num_buckets=g("relative_attention_num_buckets"),
      relative_attention_max_distance=g("relative_attention_max_distance"),
      dropout_rate=float(g("dropout_rate")), layer_norm_eps=float(g("layer_norm_epsilon")))


def t5config_to_hf_config(config: T5Config) -> dict[str, Any]:
  """Our T5Config → a transformers T5Config dict for T5ForConditionalGeneration."""
  ffn = {v: k for k, v in _FFN.items()}.get(tuple(config.mlp_activations))
  if ffn is None:
    raise CheckpointError(
        f"T5Config.mlp_activations={config.mlp_activations!r} has no exact Hugging Face "
        "equivalent; use ('relu',) or ('gelu', 'linear') to export.")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.head_dim,
      "d_ff": config.d_ff,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "feed_forward_proj": ffn,
      "tie_word_embeddings": config.tie_embeddings,  # what transformers 4.x reads
      "scale_decoder_outputs": config.tie_embeddings,  # what transformers 5 reads
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_eps,
      "dropout_rate": config.dropout_rate,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
  }


# --------------------------------------------------------------------------- scan layout


def _stacks(config: T5Config):
  return (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers))


def stack_layers(params: Params, config: T5Config) -> Params:
  """`encoder/layers_{i}/…` → `encoder/layers/…` with a leading layer axis (and decoder)."""
  out = dict(params)
  for stack, n in _stacks(config):
    sub = dict(params[stack])
    names = [f"layers_{i}" for i in range(n)]
    missing = [k for k in names if k not in sub]
    if "layers" in sub or missing:
      raise CheckpointError(
          f"stack_layers: params[{stack!r}] should hold {names[0]}…{names[-1]} "
          f"({n} = config layers) and no 'layers'; it holds {sorted(sub)}. Pass unscanned "
          "params and the config they were made with.")
    trees = [sub.pop(k) for k in names]
    try:
      sub["layers"] = jax.tree.map(lambda *xs: _xp(xs[0]).stack(xs), *trees)
    except ValueError as e:
      raise CheckpointError(f"stack_layers: {stack} layers differ in structure or shape: {e}") from e
    out[stack] = sub
  return out


def unstack_layers(params: Params, config: T5Config) -> Params:
  """Inverse of stack_layers: `encoder/layers/…` (leading layer axis) → `layers_{i}/…`."""
  out = dict(params)
  for stack, n in _stacks(config):
    sub = dict(params[stack])
    if "layers" not in sub:
      raise CheckpointError(
          f"unstack_layers: params[{stack!r}] has no 'layers' (keys {sorted(sub)}); "
          "pass scanned params (config.scan_layers=True).")
    stacked = sub.pop("layers")
    for path, x in traverse_util.flatten_dict(stacked, sep="/").items():
      if x.shape[:1] != (n,):
        raise CheckpointError(
            f"unstack_layers: {stack}/layers/{path} has shape {tuple(x.shape)}; expected a "
            f"leading layer axis of {n} (config num_{stack}_layers). Pass the config the "
            "params were made with.")
    for i in range(n):
      sub[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    out[stack] = sub
  return out


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


# --------------------------------------------------------------------------- storage


def _is_remote(path: str) -> bool:
  return "://" in path and not path.startswith("file://")


class _Dir:
  """A checkpoint directory, local or gs://, read through a TensorStore kvstore."""

  def __init__(self, path: str):
    if path.startswith("file://"):
      path = path[len("file://"):]
    self.remote = _is_remote(path)
    self.url = path.rstrip("/") if self.remote else os.path.abspath(path)
    self.kvstore = self.child_spec("")
    self._kv = None
    self._cache = {}  # small files only (checkpoint, *.json); remote exists() reads them

  def child_spec(self, rel: str) -> dict[str, Any] | str:
    """kvstore spec of `rel` (a file or zarr directory) inside this directory."""
    rel = rel.strip("/")
    m = re.fullmatch(r"gs://([^/]+)/?(.*)", self.url)
    if m:
      base = m.group(2)
      path = f"{base}/{rel}" if base and rel else base or rel
      return {"driver": "gcs", "bucket": m.group(1), "path": path + "/" if path else ""}
    if self.remote:  # other tensorstore kvstore URLs (s3://, http://…)
      return f"{self.url}/{rel}/" if rel else self.url + "/"
    return {"driver": "file", "path": (os.path.join(self.url, rel) if rel else self.url) + "/"}

  def name(self, rel: str) -> str:
    return f"{self.url}/{rel}"

  def _store(self):
    if self._kv is None:
      self._kv = ts.KvStore.open(self.kvstore).result()
    return self._kv

  def read(self, rel: str) -> bytes | None:
    if rel not in self._cache:
      r = self._store().read(rel).result()
      self._cache[rel] = None if r.state == "missing" else bytes(r.value)
    return self._cache[rel]

  def exists(self, rel: str) -> bool:
    if not self.remote:
      return os.path.exists(os.path.join(self.url, rel))
    return self.read(rel) is not None

  def top_names(self, limit: int = 20) -> list[str]:
    """Top-level entries, for error messages."""
    try:
      if not self.remote:
        return sorted(os.listdir(self.url))[:limit]
      keys = self._store().list().result()
      return sorted({k.decode().split("/")[0] for k in keys})[:limit]
    except Exception:  # noqa: BLE001 — only decorates an error message
      return []


# --------------------------------------------------------------------------- loading


def load_t5(path: str | os.PathLike, dtype: str | None = "float32", *,
            config: T5Config | str | None = None,
            config_overrides: Mapping[str, Any] | None = None) -> tuple[T5Config, Params]:
  """Loads a pretrained T5 as (T5Config, params) in hypert5's (T5X-named) layout.

  Args:
    path: a Hugging Face T5 directory (config.json + model.safetensors, or a sharded
      model.safetensors.index.json + shards; local), or a T5X checkpoint directory
      (`checkpoint_N/`, holding the msgpack `checkpoint` file; local or gs://), or that
      `checkpoint` file itself.
    dtype: every parameter is cast to it ("float32", "bfloat16", …); None keeps the
      stored dtypes.
    config: a T5Config or a size name from configs.SIZES to use instead of config.json /
      the dimensions inferred from a T5X checkpoint. Either way the checkpoint's shapes
      are checked against the final config.
    config_overrides: T5Config fields to replace, e.g. {"scan_layers": True,
      "dtype": "bfloat16"}. With scan_layers the layers come back stacked (stack_layers).

  Returns:
    (config, params): params is a nested dict of numpy arrays on the host; put them on
    devices with the shardings you need.

  Raises:
    CheckpointError naming the file, the parameter (our name and the checkpoint's) and the
    shapes when the checkpoint is missing, of an unknown format, or disagrees with the config.
  """
  path = os.fspath(path)
  if not _is_remote(path):
    local = path[len("file://"):] if path.startswith("file://") else path
    if not os.path.exists(local):
      raise CheckpointError(
          f"{local}: no such file or directory. Pass a Hugging Face T5 directory "
          "(config.json + model.safetensors) or a T5X checkpoint directory (checkpoint_N/).")
    if os.path.isfile(local):
      base = os.path.basename(local)
      if base == "checkpoint" or base == "config.json" or base.endswith(".safetensors") \
          or base.endswith(".safetensors.index.json"):
        path = os.path.dirname(os.path.abspath(local))
      else:
        raise CheckpointError(
            f"{local}: a file of unknown format; pass the checkpoint directory (a Hugging "
            "Face T5 directory or a T5X checkpoint_N directory).")
  elif path.rstrip("/").endswith("/checkpoint"):
    path = path.rstrip("/")[: -len("/checkpoint")]
  d = _Dir(path)
  if isinstance(config, str):
    if config not in SIZES:
      raise CheckpointError(f"load_t5(config={config!r}): unknown size; known: {sorted(SIZES)}")
    config = SIZES[config]

  if d.exists("config.json"):  # T5X directories never hold one
    if d.remote:
      raise CheckpointError(
          f"{d.url}: Hugging Face checkpoints are read from local disk only; copy the "
          "directory first (e.g. `gsutil -m cp -r` / `huggingface-cli download`).")
    cfg, params = _load_hf(d, config, config_overrides, dtype)
  elif d.exists("checkpoint"):
    cfg, params = _load_t5x(d, config, config_overrides, dtype)
  else:
    found = d.top_names()
    steps = sorted((int(m.group(1)), n) for n in found
                   if (m := re.fullmatch(r"checkpoint_(\d+)", n)))
    hint = (f" This looks like a T5X model directory: point at one of its checkpoints, "
            f"e.g. {d.name(steps[-1][1])}." if steps else "")
    raise CheckpointError(
        f"{d.url}: unknown checkpoint format — neither a Hugging Face T5 directory "
        "(config.json + model.safetensors) nor a T5X checkpoint directory (a msgpack "
        f"'checkpoint' file + zarr arrays). Found: {found or 'nothing'}.{hint}")

  if cfg.scan_layers:
    params = stack_layers(params, cfg)
  return cfg, params


def _final_config(base: T5Config, overrides: Mapping[str, Any] | None, where: str) -> T5Config:
  if not overrides:
    return base
  fields = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise CheckpointError(
        f"{where}: config_overrides has unknown T5Config field(s) {unknown}; known: {sorted(fields)}")
  return base.replace(**overrides)


def _cast(x: np.ndarray, dtype) -> np.ndarray:
  x = np.ascontiguousarray(x)
  return x if dtype is None else x.astype(jnp.dtype(dtype), copy=False)


# Copies of shared.weight that transformers may or may not write; lm_head.weight too when tied.
_HF_TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _load_hf(d: _Dir, config, overrides, dtype) -> tuple[T5Config, Params]:
  cfg_file = d.name("config.json")
  if config is None:
    try:
      hf = json.loads(d.read("config.json"))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{cfg_file}: not valid JSON ({e}); re-download it.") from e
    config = hf_config_to_t5config(hf, source=cfg_file)
  config = _final_config(config, overrides, cfg_file)

  files = _hf_weight_files(d)
  layout = _layout(config)
  with contextlib.ExitStack() as stack:
    handles, owner = {}, {}
    for fname in files:
      f = stack.enter_context(safetensors.safe_open(d.name(fname), framework="numpy"))
      for k in f.keys():
        handles[k], owner[k] = f, fname
    shapes = {k: tuple(h.get_slice(k).get_shape()) for k, h in handles.items()}
    # Embedding under another name (some exporters drop shared.weight and keep a copy).
    if "shared.weight" not in shapes:
      for alt in _HF_TIED + (("lm_head.weight",) if config.tie_embeddings else ()):
        if alt in shapes:
          handles["shared.weight"], owner["shared.weight"] = handles[alt], owner[alt]
          shapes["shared.weight"] = shapes[alt]
          break
    ignored = frozenset(_HF_TIED + (("lm_head.weight",) if config.tie_embeddings else ()))
    where = lambda n: d.name(owner[n] if n else files[0] if len(files) == 1  # noqa: E731
                             else "model.safetensors.index.json")
    _check_shapes(layout, shapes, kind="hf", where=where, config=config, ignored=ignored)
    if config.tie_embeddings and "lm_head.weight" in shapes and not np.array_equal(
        handles["lm_head.weight"].get_tensor("lm_head.weight"),
        handles["shared.weight"].get_tensor("shared.weight")):
      raise CheckpointError(
          f"{where('lm_head.weight')}: 'lm_head.weight' differs from 'shared.weight' but the "
          "config scales the decoder output by d_model**-0.5 as tied T5 v1.0 does "
          "(tie_word_embeddings / scale_decoder_outputs). hypert5's T5 ties the two "
          "(T5Config.tie_embeddings): a separate head with scaled outputs cannot be loaded. "
          "If the model is untied and unscaled (T5 v1.1), set scale_decoder_outputs=false "
          "and tie_word_embeddings=false in config.json.")
    flat = {}
    for p in layout:
      x = handles[p.hf].get_tensor(p.hf)
      flat[p.path] = _cast(x.T if p.transpose else x, dtype)
  return config, traverse_util.unflatten_dict(flat, sep="/")


def _hf_weight_files(d: _Dir) -> list[str]:
  if d.exists("model.safetensors"):
    return ["model.safetensors"]
  if d.exists("model.safetensors.index.json"):
    index = d.name("model.safetensors.index.json")
    try:
      weight_map = json.loads(d.read("model.safetensors.index.json"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e!r}).") from e
    files = sorted(set(weight_map.values()))
    for f in files:
      if not d.exists(f):
        raise CheckpointError(
            f"{d.name(f)}: shard listed in {index} is missing; download it again.")
    return files
  for torch_file in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
    if d.exists(torch_file):
      raise CheckpointError(
          f"{d.name(torch_file)}: PyTorch pickles are not read (torch is not a runtime "
          "dependency). Convert the directory to safetensors once, where torch is installed: "
          "python -c \"import transformers as t; "
          f"t.T5ForConditionalGeneration.from_pretrained('{d.url}')"
          ".save_pretrained('OUT_DIR', safe_serialization=True)\" and load OUT_DIR.")
  raise CheckpointError(
      f"{d.name('model.safetensors')}: missing — {d.url} has config.json but no "
      f"model.safetensors or model.safetensors.index.json (found: {d.top_names()}). "
      "Download the safetensors weights into it.")


def _t5x_state(d: _Dir) -> tuple[dict[str, Any], int]:
  """The `target` tree of a T5X checkpoint, leaves being arrays or tensorstore spec dicts."""
  file = d.name("checkpoint")
  raw = d.read("checkpoint")
  if raw.startswith(b"model_checkpoint_path"):
    raise CheckpointError(
        f"{file}: a TensorFlow (Mesh TF) checkpoint index, not a T5X one; convert it with "
        "t5x's convert_tf_checkpoint first.")
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types
    raise CheckpointError(f"{file}: not a flax msgpack file ({e!r}); re-download it.") from e
  version = contents.get("version", 0) if isinstance(contents, dict) else None
  state = contents.get("optimizer") if version else contents
  if not isinstance(state, dict) or "target" not in state:
    raise CheckpointError(
        f"{file}: no optimizer/target tree (version={version}, top keys "
        f"{sorted(contents) if isinstance(contents, dict) else type(contents).__name__}); "
        "this is not a T5X checkpoint this loader knows.")
  return state["target"], version


def _is_spec(x) -> bool:
  return isinstance(x, dict) and "driver" in x and ("kvstore" in x or "path" in x)


def _flatten_t5x(target) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict) and not _is_spec(node):
      for k, v in node.items():
        walk(f"{prefix}/{k}" if prefix else k, v)
    else:
      flat[prefix] = node

  walk("", target)
  return flat


def _infer_t5x_config(shapes: Mapping[str, tuple[int, ...]], where) -> T5Config:
  """T5Config from the array shapes of an unscanned T5X T5 checkpoint."""

  def need(path):
    if path not in shapes:
      raise CheckpointError(
          f"{where(None)}: parameter {path!r} (checkpoint name 'target/{path}') is missing, "
          "so the model dimensions cannot be inferred. Pass config= (a T5Config or size "
          "name) if this is a T5 checkpoint with other names.")
    return shapes[path]

  if any(k.startswith(("encoder/layers/", "decoder/layers/")) for k in shapes):
    raise CheckpointError(
        f"{where(None)}: a scanned T5X checkpoint (encoder/layers/… with a layer axis); only "
        "unscanned ones (encoder/layers_0/…) are read. Re-export it unscanned with t5x.")
  vocab, d_model = need("token_embedder/embedding")
  heads, buckets = need("encoder/relpos_bias/rel_embedding")
  inner = need("encoder/layers_0/attention/query/kernel")[1]
  if inner % heads:
    raise CheckpointError(
        f"{where('encoder/layers_0/attention/query/kernel')}: query width {inner} is not a "
        f"multiple of the {heads} heads of encoder/relpos_bias/rel_embedding; pass config=.")
  gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
  d_ff = need(f"encoder/layers_0/mlp/{'wi_0' if gated else 'wi'}/kernel")[1]
  count = lambda s: len({k.split("/")[1] for k in shapes  # noqa: E731
                         if re.match(fr"{s}/layers_\d+/", k)})
  return T5Config(
      vocab_size=vocab, d_model=d_model, d_ff=d_ff, num_heads=heads,
      head_dim=inner // heads, num_encoder_layers=count("encoder"),
      num_decoder_layers=count("decoder"),
      mlp_activations=("gelu", "linear") if gated else ("relu",),
      tie_embeddings="decoder/logits_dense/kernel" not in shapes,
      relative_attention_num_buckets=buckets)


def _load_t5x(d: _Dir, config, overrides, dtype) -> tuple[T5Config, Params]:
  target, version = _t5x_state(d)
  flat = _flatten_t5x(target)
  # Open every zarr array concurrently (a metadata read each; matters on GCS).
  pending = {}
  for name, leaf in flat.items():
    if _is_spec(leaf):
      pending[name] = ts.open(_t5x_read_spec(d, leaf), open=True, read=True)
  arrays, where_map = {}, {}
  for name, leaf in flat.items():
    if name in pending:
      rel = _t5x_rel_path(leaf)
      where_map[name] = d.name(rel)
      try:
        arrays[name] = pending[name].result()
      except ValueError as e:  # tensorstore reports NOT_FOUND & co. as ValueError
        why = str(e).split(" [tensorstore_spec=")[0]
        raise CheckpointError(
            f"{d.name(rel)}: cannot open the zarr array of parameter {name!r} (checkpoint "
            f"name 'target/{name}', referenced by {d.name('checkpoint')}): {why}. The "
            "checkpoint is incomplete; copy the whole checkpoint_N directory again.") from e
    else:
      where_map[name] = d.name("checkpoint")
      arrays[name] = np.asarray(leaf)
  shapes = {k: tuple(a.shape) for k, a in arrays.items()}
  where = lambda n: where_map[n] if n else d.name("checkpoint")  # noqa: E731

  config = config if config is not None else _infer_t5x_config(shapes, where)
  config = _final_config(config, overrides, d.name("checkpoint"))
  layout = _layout(config)
  _check_shapes(layout, shapes, kind="t5x", where=where, config=config)

  reads = {p.path: arrays[p.path].read() if p.path in pending else arrays[p.path]
           for p in layout}
  out = {}
  for path, r in reads.items():
    x = r.result() if isinstance(r, ts.Future) else r
    if version == 2 and x.dtype == np.uint16:  # VERSION 2 stored bfloat16 bits as uint16
      x = x.view(jnp.bfloat16)
    out[path] = _cast(x, dtype)
  return config, traverse_util.unflatten_dict(out, sep="/")


def _t5x_rel_path(spec: Mapping[str, Any]) -> str:
  kv = spec.get("kvstore")
  path = kv.get("path") if isinstance(kv, dict) and "path" in kv else spec.get("path", "")
  # Keep only the array's own directory name: t5x writes paths relative to the
  # checkpoint directory, and this also survives a checkpoint that was moved.
  return path.rstrip("/").split("/")[-1]


def _t5x_read_spec(d: _Dir, spec: Mapping[str, Any]) -> dict[str, Any]:
  # Shape, dtype and chunking come from the array's .zarray; the msgpack copy is a hint.
  return {"driver": "zarr", "kvstore": d.child_spec(_t5x_rel_path(spec))}


# --------------------------------------------------------------------------- saving


def _plain(params: Params) -> Params:
  """Unboxes flax partitioning metadata, unfreezes, and drops a {'params': …} wrapper."""
  params = unfreeze(meta.unbox(params))
  if set(params) == {"params"}:
    params = dict(params["params"])
  return params


def _unscanned_flat(config: T5Config, params: Params, source: str) -> dict[str, Any]:
  params = _plain(params)
  if any("layers" in params.get(s, {}) for s in ("encoder", "decoder")):
    params = unstack_layers(params, config)
  flat = traverse_util.flatten_dict(params, sep="/")
  layout = _layout(config)
  _check_shapes(layout, {k: tuple(np.shape(v)) for k, v in flat.items()}, kind="params",
                where=lambda n: source, config=config)
  return flat


def save_hf_t5(config: T5Config, params: Params, path: str | os.PathLike, *,
               overwrite: bool = False) -> None:
  """Writes a Hugging Face T5ForConditionalGeneration directory: config.json + model.safetensors.

  Tensors keep the dtype of `params` (scanned or not, boxed or not). Written into a
  temporary sibling directory and renamed into place, so a crash leaves either no
  directory or a complete one. An existing non-empty `path` is replaced only with
  overwrite=True (it is renamed aside and deleted after the new one is in place — other
  files in it, e.g. a tokenizer, go with it).
  """
  path = os.path.abspath(os.fspath(path))
  if _is_remote(path):
    raise CheckpointError(f"save_hf_t5({path!r}): write to a local directory, then copy it.")
  hf_config = t5config_to_hf_config(config)
  flat = _unscanned_flat(config, params, f"params passed to save_hf_t5({path!r})")
  tensors = {}
  for p in _layout(config):
    x = np.asarray(flat[p.path])
    tensors[p.hf] = np.ascontiguousarray(x.T if p.transpose else x)
  hf_config["torch_dtype"] = str(tensors["shared.weight"].dtype)

  def write(tmp):
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
      f.write("\n")
    # format=pt: transformers refuses safetensors files without a known format tag.
    safetensors.numpy.save_file(tensors, os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt"})
  write_dir_atomically(path, write, overwrite, "save_hf_t5")


def write_dir_atomically(path: str, write, overwrite: bool, what: str) -> None:
  """Writes a directory through `write(tmp_dir)` into a sibling temp dir, fsyncs it, then
  swaps it in: a crash leaves either the old directory or the new one, never a mix."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise CheckpointError(f"{what}: {path} exists and is not a directory; pick another path.")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise CheckpointError(f"{what}: {path} exists and is not empty; pass overwrite=True to "
                          "replace it or pick another path.")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    write(tmp)
    for name in os.listdir(tmp):
      _fsync(os.path.join(tmp, name))
    _swap_in(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _fsync(file: str) -> None:
  fd = os.open(file, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _swap_in(tmp: str, path: str) -> None:
  """Renames directory `tmp` to `path`, replacing an existing `path` directory.

  mkdtemp makes 0700 directories: open them to the umask first, since a saved model is
  for others too."""
  umask = os.umask(0)
  os.umask(umask)
  for root, dirs, files in os.walk(tmp):
    os.chmod(root, 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)
  old = None
  if os.path.isdir(path):
    if os.listdir(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
      os.replace(path, os.path.join(old, "d"))
    else:
      os.rmdir(path)
  os.replace(tmp, path)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """t5x's rule: the largest chunk that divides `shape` and holds ≤ 64 MiB, found by
  repeatedly shrinking the currently largest dimension to its next smaller divisor."""
  target = max(1, _T5X_CHUNK_BYTES // itemsize)
  divisors = [[k for k in range(1, n + 1) if n % k == 0] or [1] for n in shape]
  while int(np.prod([ds[-1] for ds in divisors])) > target:
    i = max(range(len(shape)), key=lambda j: divisors[j][-1])
    divisors[i].pop()
  return [ds[-1] for ds in divisors]


def write_t5x_checkpoint(params: Params, path: str | os.PathLike, *, step: int = 0,
                         overwrite: bool = False) -> None:
  """Writes unscanned T5 params as a T5X checkpoint directory (t5x VERSION 3 layout).

  `path` is the checkpoint_N directory: it gets the msgpack `checkpoint` file
  ({"version": 3, "optimizer": {"target": specs, "state": {"step": step}}}) and one gzip
  zarr array per parameter, named `target.<dotted path>`, with t5x's chunking and the
  params' own dtype; see the module docstring. No optimizer slots are written, so t5x
  reads it with `checkpoints.load_t5x_checkpoint` (or a Checkpointer restore with
  fallback_state); load_t5 reads it too. Local paths are written to a temporary sibling and
  renamed; gs:// paths are written in place with the `checkpoint` file last, so a reader
  never sees a `checkpoint` whose arrays are missing.
  """
  path = os.fspath(path)
  flat = traverse_util.flatten_dict(_plain(params), sep="/")
  if any(k.startswith(("encoder/layers/", "decoder/layers/")) for k in flat):
    raise CheckpointError(
        f"write_t5x_checkpoint({path!r}): params are scanned (encoder/layers/…); T5X "
        "checkpoints are unscanned — call unstack_layers(params, config) first.")
  remote = _is_remote(path)
  if remote:
    if not path.startswith("gs://"):
      raise CheckpointError(f"write_t5x_checkpoint({path!r}): only local and gs:// paths are written.")
    out = path.rstrip("/")
  else:
    path = os.path.abspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
      raise CheckpointError(
          f"write_t5x_checkpoint: {path} exists and is not empty; pass overwrite=True or "
          "pick another path.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    d = _Dir(out)
    specs, writes = {}, []
    for name, x in flat.items():
      x = np.asarray(x)
      rel = "target." + name.replace("/", ".")
      stored_kv = ({"driver": "gcs", "bucket": _T5X_DUMMY_BUCKET, "path": rel} if remote
                   else {"driver": "file", "path": rel})
      spec = {"driver": "zarr", "dtype": jnp.dtype(x.dtype).name, "kvstore": stored_kv,
              "metadata": {"compressor": {"id": "gzip"}, "shape": list(x.shape),
                           "chunks": _chunk_shape(x.shape, x.dtype.itemsize)}}
      # What t5x stores is the spec's to_json() (normalised by tensorstore).
      specs[name] = ts.Spec(spec).to_json()
      t = ts.open({**spec, "kvstore": d.child_spec(rel)}, create=True, open=True).result()
      writes.append(t.write(x))
    for w in writes:
      w.result()
    state = {"version": T5X_VERSION,
             "optimizer": {"target": traverse_util.unflatten_dict(specs, sep="/"),
                           "state": {"step": np.asarray(step, np.int32)}}}
    d._store().write("checkpoint", serialization.msgpack_serialize(state)).result()
    if not remote:  # tensorstore's file kvstore fsyncs every write (file_io_sync)
      _swap_in(out, path)
  except BaseException:
    if not remote:
      shutil.rmtree(out, ignore_errors=True)
    raise
