"""The training loop: a jitted, sharded step plus hooks for logging, eval and checkpoints.

The loop itself only feeds batches and calls hooks; everything periodic (metrics, eval,
checkpoints) is a hook, so a run mode composes what it needs. Resume is exact: the
checkpoint restores params, optimizer state, step and PRNG key, and the data pipeline is
deterministic, so skipping the batches already consumed gives the same next batch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from hypert5.training import checkpoints as ckpt_lib
from hypert5.training import flops as flops_lib
from hypert5.training import modes, partitioning, train_step as ts

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


class NaNLossError(FloatingPointError):
  """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  num_steps: int = 1000
  log_every: int = 10
  eval_every: int = 0            # 0: no periodic eval
  checkpoint_every: int = 500    # 0: only at the end
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  microbatches: int = 1          # gradient accumulation
  crash_on_nan: bool = True
  enable_dropout: bool = True
  seed: int = 0


class Hook:
  """Called after every step; `trainer.step` is the step the state has reached (counted on
  the host, so reading it does not wait for the device)."""

  def on_step(self, trainer: "Trainer", state: ts.TrainState, metrics: dict) -> None:
    pass

  def on_end(self, trainer: "Trainer", state: ts.TrainState) -> None:
    pass


class MetricsLogger(Hook):
  """Console line + TensorBoard + JSONL: step, loss, tokens/s, TFLOP/s/device, MFU, ETA."""

  def __init__(self, model_dir: str, every: int, flops_per_step: float, total_steps: int):
    from clu import metric_writers  # pulled in by seqio
    self.every, self.flops_per_step, self.total = every, flops_per_step, total_steps
    self.primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        os.path.join(model_dir, "train"), just_logging=not self.primary)
    self.jsonl = open(os.path.join(model_dir, "train_log.jsonl"), "a") if self.primary else None
    self.peak, self.peak_source = flops_lib.device_peak_flops()
    self.devices = jax.device_count()
    self._t0, self._last_step = 0.0, None
    self._bar = None
    if self.primary and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
    self.history: list[dict] = []

  def on_step(self, trainer, state, metrics):
    step = trainer.step
    if step % self.every and step != self.total and self._last_step is not None:
      return
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    if self._last_step is None:  # the first step includes compilation: no timing
      steps, dt = 1, float("nan")
    else:
      steps = step - self._last_step
      dt = (now - self._t0) / max(steps, 1)
    self._t0, self._last_step = now, step
    tflops = self.flops_per_step / dt / self.devices / 1e12
    values.update({"step_time_s": dt, "tokens_per_s": values["tokens"] / dt,
                   "tflops_per_device": tflops,
                   "mfu": tflops * 1e12 / self.peak if self.peak else float("nan")})
    self.history.append({"step": step, **values})
    if not self.primary:
      return
    self.writer.write_scalars(step, values)
    self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self.jsonl.flush()
    eta = dt * (self.total - step)
    line = (f"step {step}/{self.total} loss {values['loss']:.4f} "
            f"tok/s {values['tokens_per_s']:,.0f} TFLOP/s/dev {tflops:.3f} "
            f"MFU {values['mfu']:.1%} ETA {eta:,.0f}s")
    if self._bar is not None:
      self._bar.update(steps)
      self._bar.set_postfix_str(line.split(" ", 2)[2])
    else:
      log.info(line)

  def on_end(self, trainer, state):
    if self._bar is not None:
      self._bar.close()
    self.writer.flush()
    if self.jsonl:
      self.jsonl.close()


class CheckpointHook(Hook):
  def __init__(self, checkpointer: ckpt_lib.Checkpointer):
    self.checkpointer = checkpointer

  def on_step(self, trainer, state, metrics):
    step = trainer.step
    if self.checkpointer.should_save(step):
      self.checkpointer.save(state, {"batches": trainer.batches_consumed})

  def on_end(self, trainer, state):
    if self.checkpointer.latest_step() != trainer.step:
      self.checkpointer.save(state, {"batches": trainer.batches_consumed}, force=True)
    self.checkpointer.close()


class PeriodicHook(Hook):
  """Calls fn(trainer, state) every `every` steps (eval during training)."""

  def __init__(self, every: int, fn: Callable[["Trainer", ts.TrainState], None]):
    self.every, self.fn = every, fn

  def on_step(self, trainer, state, metrics):
    if self.every and trainer.step % self.every == 0:
      self.fn(trainer, state)


class Trainer:
  """Owns the mesh, the jitted step and the loop; the state is passed through."""

  def __init__(self, objective: modes.Objective, optimizer, config: TrainerConfig,
               mesh: jax.sharding.Mesh, example_batch: Batch):
    self.objective, self.optimizer, self.config, self.mesh = objective, optimizer, config, mesh
    self.state_sh = ts.state_shardings(objective, optimizer, mesh)
    self.frozen_sh = ts.frozen_shardings(objective, mesh)
    step_fn = ts.make_train_step(objective, optimizer, config.microbatches, config.enable_dropout)
    self.batch_sh = {k: partitioning.batch_sharding(mesh, np.ndim(v))
                     for k, v in example_batch.items()}
    with jax.set_mesh(mesh), partitioning.axis_rules():
      self._step = ts.jit_train_step(step_fn, mesh, self.state_sh, self.frozen_sh, example_batch)
    self.batches_consumed = 0
    self.step = 0  # the host's count of the state's step, during train()

  def init_state(self, trainable: Any) -> ts.TrainState:
    rng = jax.random.key(self.config.seed)
    with jax.set_mesh(self.mesh):
      state = jax.jit(lambda p: ts.create_train_state(self.optimizer, p, rng),
                      out_shardings=self.state_sh)(trainable)
    log.info("mode %s: %s trainable parameters", self.objective.mode,
             f"{modes.count_params(trainable):,}")
    return state

  def place_frozen(self, frozen: Any) -> Any:
    return jax.device_put(frozen, self.frozen_sh)

  def train(self, state: ts.TrainState, frozen: Any, batches: Iterator[Batch],
            hooks: Sequence[Hook] = ()) -> ts.TrainState:
    # The step is counted on the host: reading state.step would wait for every step to
    # finish before the next batch is fetched and placed. At most two steps are in flight
    # (the running one and the next), so queued batches cannot pile up in device memory.
    self.step = last_good = int(state.step)
    in_flight = None
    while self.step < self.config.num_steps:
      batch = next(batches)
      self.batches_consumed += 1
      with jax.set_mesh(self.mesh), partitioning.axis_rules():
        batch = jax.device_put(batch, self.batch_sh)
        state, metrics = self._step(state, frozen, batch)
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      in_flight = metrics["loss"]
      step = self.step = self.step + 1
      # Checking the loss syncs with the device, so only where it matters: before anything
      # is logged or checkpointed (a NaN step must never be saved) and at the end.
      check = (step % self.config.log_every == 0 or step == self.config.num_steps or
               (self.config.checkpoint_every and step % self.config.checkpoint_every == 0))
      if self.config.crash_on_nan and check and not math.isfinite(float(metrics["loss"])):
        for hook in hooks:  # let the checkpoint hook finish pending saves, not save this one
          if isinstance(hook, CheckpointHook):
            hook.checkpointer.close()
        raise NaNLossError(
            f"loss is {float(metrics['loss'])} by step {step}; the last good checkpoint "
            f"(step <= {last_good}) is kept. Lower the learning rate or check the data; set "
            "TrainerConfig.crash_on_nan=False to continue anyway.")
      if check:
        last_good = step
      for hook in hooks:
        hook.on_step(self, state, metrics)
    for hook in hooks:
      hook.on_end(self, state)
    return state
