"""Hugging Face PEFT LoRA adapters of T5 <-> our `LoRA` pytree.

A PEFT adapter directory holds `adapter_config.json` (peft_type LORA, task_type
SEQ_2_SEQ_LM, r, lora_alpha, target_modules) and `adapter_model.safetensors` with keys like
`base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight` ([r, d_in]) and
`...lora_B.weight` ([d_out, r]). PEFT computes x·Aᵀ·Bᵀ·(alpha/r); ours is x·A·B·(alpha/r)
with A [d_in, r], B [r, d_out], so conversion is a transpose.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import safetensors.numpy

from hypert5.models import peft as peft_lib
from hypert5.models.configs import T5Config
from hypert5.training.model_io import CheckpointError, write_dir_atomically

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Block kind -> (stack, sub-layer index, HF module); projections are q/k/v/o or MLP names.
_HF_BLOCKS = {
    "encoder_self": ("encoder", 0, "SelfAttention"),
    "decoder_self": ("decoder", 0, "SelfAttention"),
    "decoder_cross": ("decoder", 1, "EncDecAttention"),
    "encoder_mlp": ("encoder", 1, "DenseReluDense"),
    "decoder_mlp": ("decoder", 2, "DenseReluDense"),
}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\."
    r"(SelfAttention|EncDecAttention|DenseReluDense)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def _module_path(kind: str, layer: int, proj: str) -> str:
  stack, sub, module = _HF_BLOCKS[kind]
  return f"{stack}.block.{layer}.layer.{sub}.{module}.{proj}"


def _kind_of(stack: str, sub: int, module: str) -> str | None:
  for kind, spec in _HF_BLOCKS.items():
    if spec == (stack, sub, module):
      return kind
  return None


def load_peft_adapter(adapter_dir: str | os.PathLike, config: T5Config) -> peft_lib.LoRA:
  """Reads a PEFT LoRA adapter for a T5 of `config` into a LoRA with batch axis 1."""
  adapter_dir = os.fspath(adapter_dir)
  cfg_path = os.path.join(adapter_dir, CONFIG_FILE)
  weights_path = os.path.join(adapter_dir, WEIGHTS_FILE)
  for path in (cfg_path, weights_path):
    if not os.path.exists(path):
      raise CheckpointError(f"{path}: missing; a PEFT LoRA adapter directory needs "
                            f"{CONFIG_FILE} and {WEIGHTS_FILE}")
  with open(cfg_path) as f:
    acfg = json.load(f)
  if acfg.get("peft_type", "LORA") != "LORA":
    raise CheckpointError(f"{cfg_path}: peft_type={acfg.get('peft_type')!r}; only LORA "
                          "adapters can be loaded as a LoRA pytree")
  for field in ("rank_pattern", "alpha_pattern"):
    if acfg.get(field):
      raise CheckpointError(f"{cfg_path}: {field} is set; per-module ranks/alphas are not "
                            "supported (one rank and alpha for every target)")
  if acfg.get("use_dora"):
    raise CheckpointError(f"{cfg_path}: use_dora is set; DoRA adapters are not plain LoRA")
  if acfg.get("bias", "none") != "none":
    raise CheckpointError(f"{cfg_path}: bias={acfg['bias']!r}; only bias='none' is supported")
  rank, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
  if acfg.get("use_rslora"):
    alpha = alpha * np.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); ours is alpha/r

  tensors = safetensors.numpy.load_file(weights_path)
  found: dict[tuple[str, str], dict[int, dict[str, np.ndarray]]] = {}
  for key, value in tensors.items():
    m = _KEY.match(key)
    kind = m and _kind_of(m.group(1), int(m.group(3)), m.group(4))
    if not kind:
      raise CheckpointError(f"{weights_path}: tensor {key!r} is not a LoRA weight of a T5 "
                            "attention or MLP projection")
    layer, proj, which = int(m.group(2)), m.group(5), m.group(6)
    found.setdefault((kind, proj), {}).setdefault(layer, {})[which] = value

  a_tree, b_tree = {}, {}
  for (kind, proj), layers in sorted(found.items()):
    (n_layers, d_in, _), (_, _, d_out) = peft_lib.lora_shapes(config, kind, proj, rank)
    a = np.zeros((1, n_layers, d_in, rank), np.float32)
    b = np.zeros((1, n_layers, rank, d_out), np.float32)  # absent layers: zero delta
    for layer, pair in layers.items():
      name = _module_path(kind, layer, proj)
      if layer >= n_layers or set(pair) != {"A", "B"}:
        raise CheckpointError(f"{weights_path}: {name} has {sorted(pair)} for layer {layer} "
                              f"but the model has {n_layers} layers and needs lora_A and lora_B")
      for which, got, want in (("A", pair["A"].shape, (rank, d_in)),
                               ("B", pair["B"].shape, (d_out, rank))):
        if got != want:
          raise CheckpointError(f"{weights_path}: {name}.lora_{which}.weight has shape {got}, "
                                f"expected {want} for r={rank} and this T5Config")
      a[0, layer] = pair["A"].T
      b[0, layer] = pair["B"].T
    a_tree.setdefault(kind, {})[proj] = a
    b_tree.setdefault(kind, {})[proj] = b
  if not a_tree:
    raise CheckpointError(f"{weights_path}: no LoRA weights found")
  return peft_lib.LoRA(a=a_tree, b=b_tree, alpha=alpha)


def _target_modules(lora: peft_lib.LoRA) -> list[str] | str:
  """A list of module names when each covers every block kind it names, else a regex."""
  targets = set(lora.targets())
  projs = sorted({p for _, p in targets})
  attention = all(p in peft_lib.ATTENTION_PROJECTIONS for p in projs)
  full = {(k, p) for p in projs
          for k in (peft_lib.ATTENTION_KINDS if p in peft_lib.ATTENTION_PROJECTIONS
                    else peft_lib.MLP_KINDS)}
  if attention and targets == full:
    return projs
  patterns = []
  for kind, proj in sorted(targets):
    stack, sub, module = _HF_BLOCKS[kind]
    patterns.append(rf"{stack}\.block\.\d+\.layer\.{sub}\.{module}\.{proj}")
  return ".*(" + "|".join(patterns) + ")"


def save_peft_adapter(lora: peft_lib.LoRA, config: T5Config, adapter_dir: str | os.PathLike,
                      base_model_name_or_path: str | None = None) -> None:
  """Writes `lora` (batch axis of size 1) as a PEFT LoRA adapter directory, atomically."""
  adapter_dir = os.fspath(adapter_dir)
  if lora.batch_size != 1:
    raise ValueError(f"save_peft_adapter takes one task's LoRA (batch 1), got batch "
                     f"{lora.batch_size}; select a row with jax.tree.map(lambda x: x[i:i+1], lora)")
  tensors: dict[str, np.ndarray] = {}
  for kind, proj in lora.targets():
    a = np.asarray(lora.a[kind][proj], np.float32)[0]
    b = np.asarray(lora.b[kind][proj], np.float32)[0]
    for layer in range(a.shape[0]):
      name = "base_model.model." + _module_path(kind, layer, proj)
      tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[layer].T)
      tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[layer].T)
  acfg: dict[str, Any] = {
      "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": lora.rank,
      "lora_alpha": lora.alpha, "lora_dropout": 0.0, "bias": "none",
      "target_modules": _target_modules(lora), "fan_in_fan_out": False,
      "use_rslora": False, "inference_mode": True, "modules_to_save": None,
      "base_model_name_or_path": base_model_name_or_path,
  }
  def write(tmp):
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(acfg, f, indent=2)
    safetensors.numpy.save_file(tensors, os.path.join(tmp, WEIGHTS_FILE),
                                metadata={"format": "pt"})
  write_dir_atomically(adapter_dir, write, overwrite=True, what="save_peft_adapter")


# -- generic Prefix / LoRA files (any block kinds; PEFT's formats cannot hold a Prefix) ----


def _flatten(peft: peft_lib.Prefix | peft_lib.LoRA) -> tuple[dict[str, np.ndarray], dict]:
  if isinstance(peft, peft_lib.Prefix):
    tensors = {f"{part}/{kind}": np.asarray(x, np.float32)
               for part, tree in (("keys", peft.keys), ("values", peft.values))
               for kind, x in tree.items()}
    return tensors, {"type": "prefix"}
  tensors = {f"{part}/{kind}/{proj}": np.asarray(x, np.float32)
             for part, tree in (("a", peft.a), ("b", peft.b))
             for kind, projs in tree.items() for proj, x in projs.items()}
  return tensors, {"type": "lora", "alpha": repr(float(peft.alpha))}


def _unflatten(tensors: dict[str, np.ndarray], meta: dict, where: str):
  kind_of = meta.get("type")
  if kind_of == "prefix":
    trees: dict[str, dict] = {"keys": {}, "values": {}}
    for name, x in tensors.items():
      part, kind = name.split("/")
      trees[part][kind] = x
    return peft_lib.Prefix(keys=trees["keys"], values=trees["values"])
  if kind_of == "lora":
    trees = {"a": {}, "b": {}}
    for name, x in tensors.items():
      part, kind, proj = name.split("/")
      trees[part].setdefault(kind, {})[proj] = x
    return peft_lib.LoRA(a=trees["a"], b=trees["b"], alpha=float(meta["alpha"]))
  raise CheckpointError(f"{where}: metadata type={kind_of!r}; not a file written by "
                        "save_peft_safetensors / save_peft_orbax")


def save_peft_safetensors(peft, path: str) -> str:
  tensors, meta = _flatten(peft)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  safetensors.numpy.save_file(tensors, tmp, metadata=meta)
  os.replace(tmp, path)
  return path


def save_tree_safetensors(tree: dict, path: str) -> str:
  """A nested dict of arrays (e.g. a Flax module's params) as one safetensors file with
  "/"-joined keys; written to a temp file and renamed, so a crash keeps the old file."""
  from flax import traverse_util
  tensors = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  safetensors.numpy.save_file(tensors, path + ".tmp")
  os.replace(path + ".tmp", path)
  return path


def load_tree_safetensors(path: str) -> dict:
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file")
  return _nest(safetensors.numpy.load_file(path))


def load_peft_safetensors(path: str):
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file (expected a .safetensors written by "
                          "`hypert5 export`)")
  with safetensors.safe_open(path, framework="numpy") as f:
    meta = f.metadata() or {}
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  return _unflatten(tensors, meta, path)


def _nest(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, x in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return tree


def save_peft_orbax(peft, directory: str) -> str:
  """An Orbax checkpoint of the arrays (nested by part/kind[/proj]) + meta.json beside."""
  import orbax.checkpoint as ocp
  tensors, meta = _flatten(peft)
  directory = os.path.abspath(directory)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "arrays"), _nest(tensors), force=True)
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump(meta, f)
  return directory


def load_peft_orbax(directory: str):
  import jax
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(directory, "arrays"))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  return _unflatten(flat, meta, directory)
