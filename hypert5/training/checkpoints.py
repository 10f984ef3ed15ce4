"""Train-state checkpoints: the one checkpoint path (Orbax CheckpointManager).

A checkpoint holds what resuming needs and nothing else: the trainable parameters, the
optimizer state, the step, the PRNG key, and the data position (batches consumed from the
deterministic input pipeline). The frozen downstream model is *referenced* — its path is
recorded in `downstream.json` in MODEL_DIR once — never re-saved every period.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the last good checkpoint untouched; saves are asynchronous, keep-N and
periodic.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from hypert5.training.train_step import TrainState

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint in MODEL_DIR does not fit the configured model."""


def _to_saveable(state: TrainState) -> dict:
  rng = state.rng
  rng = (jax.random.key_data(rng) if isinstance(rng, jax.Array)
         else jax.eval_shape(jax.random.key_data, rng))  # an abstract template's key
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": rng}


def _restore_target(x: Any) -> jax.ShapeDtypeStruct:
  if not isinstance(x, jax.ShapeDtypeStruct):
    return ocp.utils.to_shape_dtype_struct(x)
  if x.sharding is None:
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  return x


class Checkpointer:
  """Saves and restores TrainStates under `<model_dir>/checkpoints/<step>`."""

  def __init__(self, model_dir: str, keep: int = 3, period: int = 1000,
               async_save: bool = True):
    self.directory = os.path.join(model_dir, "checkpoints")
    self.period = period
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.period > 0 and step % self.period == 0

  def save(self, state: TrainState, meta: dict[str, Any], force: bool = False) -> bool:
    step = int(state.step)
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    if saved:
      log.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores into the shapes/shardings of `template`: a TrainState of arrays, or of
    jax.ShapeDtypeStructs (jax.eval_shape; unsharded leaves go to this host's first device)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(_restore_target, _to_saveable(template))
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                        meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"{self.directory}/{step}: the checkpoint does not match the configured model "
          f"({type(e).__name__}: {str(e)[:300]}). Use a fresh MODEL_DIR, or the gin config "
          "the checkpoint was trained with (MODEL_DIR/config.gin).") from e
    s = restored["state"]
    state = TrainState(step=s["step"], params=s["params"], opt_state=s["opt_state"],
                       rng=jax.random.wrap_key_data(s["rng"]))
    log.info("checkpoint: restored step %d from %s", step, self.directory)
    return state, dict(restored["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def write_downstream_reference(model_dir: str, reference: dict[str, Any]) -> None:
  """Records where the frozen downstream model comes from (written once per MODEL_DIR)."""
  path = os.path.join(model_dir, "downstream.json")
  os.makedirs(model_dir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(reference, f, indent=2)
  os.replace(tmp, path)


def restore_params_from(model_dir: str, template: TrainState) -> Any:
  """The trainable parameters of another run's latest checkpoint, for a new run to start
  from (hyperpretraining -> multi-task fine-tuning). Step, optimizer state and data
  position start fresh; the runs must share the model and the optimizer's kind."""
  source = Checkpointer(model_dir, async_save=False)
  try:
    if source.latest_step() is None:
      raise CheckpointMismatchError(f"{source.directory}: no checkpoint to initialise from")
    state, _ = source.restore(template)
  finally:
    source.close()
  return state.params
