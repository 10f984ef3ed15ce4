"""Device mesh, the logical-axis rules table, and shardings derived from logical names.

One mesh with axes (data, fsdp, model) serves every run: data parallelism over `data`,
parameters sharded over `fsdp` (ZeRO-3 style; the batch is split over it too), and tensor
parallelism of heads / MLP / vocab over `model`. Parameters and activations name their
dimensions logically; RULES maps those names to mesh axes in priority order (flax assigns a
mesh axis to the first logical dimension that claims it, so `embed` falls back to
replication in arrays whose batch already took `fsdp`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")

RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_heads", "model"),
    ("activation_mlp", "model"),
    ("activation_vocab", "model"),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_kv", None),
    ("vocab", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("mlp", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("relpos_buckets", None),
    ("prefix", None),
    ("lora_rank", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; one axis may be -1 to take all remaining devices."""
  data: int = -1
  fsdp: int = 1
  model: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    dims = [self.data, self.fsdp, self.model]
    if dims.count(-1) > 1:
      raise ValueError(f"MeshConfig {self}: at most one axis may be -1")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
      if num_devices % known:
        raise ValueError(f"MeshConfig {self}: {num_devices} devices do not divide by {known}")
      dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) > num_devices:
      raise ValueError(
          f"MeshConfig {self} needs {math.prod(dims)} devices but {num_devices} are visible; "
          "set data=-1 to use them all")
    return tuple(dims)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over the first prod(shape) devices (all of them when an axis is -1)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = config.shape(len(devices))
  devices = devices[:math.prod(shape)]
  # Auto axes: Linen's logical constraints need them (make_mesh defaults to Explicit).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (e.g. 4 heads on an 8-way model axis)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept, size = [], 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def logical_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                     rules=RULES) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules=RULES) -> Any:
  """NamedShardings for a pytree of `nn.LogicallyPartitioned` (abstract) parameters."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return logical_sharding(leaf.names, leaf.value.shape, mesh, rules)
    return NamedSharding(mesh, P())
  return jax.tree.map(one, boxed_abstract,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def axis_rules(rules=RULES):
  """Context manager that makes Linen's logical constraints resolve with `rules`."""
  return nn.logical_axis_rules(rules)
