"""Optimizers (Adafactor with t5x defaults, AdamW) and learning-rate schedules."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adafactor"          # "adafactor" | "adamw"
  learning_rate: float = 1e-3      # peak rate (rsqrt: the rate at the end of warm-up)
  schedule: str = "rsqrt"          # one of SCHEDULES
  warmup_steps: int = 1000
  total_steps: int = 10_000        # cosine decays to zero here
  weight_decay: float = 0.0
  clip_norm: float = 1.0           # global-norm clipping for AdamW; Adafactor clips updates
  b1: float = 0.9
  b2: float = 0.999
  # Learning-rate multiplier for parameters that the pretrained checkpoint did not provide
  # (HyperT5's queries and generator heads): they start from scratch and need more.
  new_param_lr_multiplier: float = 1.0

  def __post_init__(self):
    if self.name not in ("adafactor", "adamw"):
      raise ValueError(f"optimizer {self.name!r}; expected 'adafactor' or 'adamw'")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule {self.schedule!r}; expected one of {SCHEDULES}")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  lr, warm = cfg.learning_rate, max(cfg.warmup_steps, 1)
  if cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(cfg.total_steps, warm + 1))
  # t5x's rsqrt: constant through warm-up, then lr * sqrt(warmup / step).
  return lambda step: lr * jnp.sqrt(warm / jnp.maximum(step, warm).astype(jnp.float32))


def _base(cfg: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name == "adafactor":
    # t5x defaults: factored second moments, decay 0.8, update clipping 1.0, relative step
    # scaled by parameter RMS.
    return optax.adafactor(learning_rate=schedule, decay_rate=0.8, clipping_threshold=1.0,
                           multiply_by_parameter_scale=True, factored=True,
                           weight_decay_rate=cfg.weight_decay or None)
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def make_optimizer(cfg: OptimizerConfig,
                   is_new_param: Callable[[tuple], bool] | None = None) -> optax.GradientTransformation:
  """The optimizer; `is_new_param(path)` marks parameters that get new_param_lr_multiplier."""
  schedule = make_schedule(cfg)
  if is_new_param is None or cfg.new_param_lr_multiplier == 1.0:
    return _base(cfg, schedule)
  boosted = lambda step: schedule(step) * cfg.new_param_lr_multiplier

  def labels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "new" if is_new_param(path) else "body", params)
  return optax.multi_transform({"body": _base(cfg, schedule), "new": _base(cfg, boosted)},
                               labels)


def hyper_new_params(path: tuple) -> bool:
  """HyperT5 parameters outside its body (queries, heads). Extra encoder layers
  (`HyperT5Config.extra_encoder_layers`) are body: they learn at the body's rate."""
  first = getattr(path[0], "key", None)
  return first not in ("token_embedder", "encoder", "decoder")
