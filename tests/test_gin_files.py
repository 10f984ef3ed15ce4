"""Every gin file under gin/ parses and binds against the code, and every experiment lowers
one train step at its real size on the 8 simulated CPU devices.

Required macros (MODEL_DIR, DOWNSTREAM_CHECKPOINT, *_DATA_DIR, ...) get dummy strings.
Nothing is allocated or read: parameters, optimizer state and batches are ShapeDtypeStructs,
no checkpoint is loaded and task registrations are checked for their bindings, not called.
"""
import functools
import inspect
import os
import re
import sys

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import pytest

from hypert5 import main, runs, runs_llama
from hypert5.usage import UsageError
from hypert5.training import optimizers, partitioning, train_step

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
# Where add-on files (models/, runs/, fragments) are checked: on top of a complete config.
BASE = "experiments/synthetic_tiny.gin"
LLAMA_BASE = "experiments/hyperllama_synthetic_tiny.gin"  # for the decoder-only pieces
NUM_DEVICES = 8


def _gin_files() -> list[str]:
  out = []
  for root, _, files in os.walk(GIN_DIR):
    out += [os.path.relpath(os.path.join(root, f), GIN_DIR) for f in files if f.endswith(".gin")]
  return sorted(out)


def _read(path: str) -> str:
  with open(os.path.join(GIN_DIR, path)) as f:
    return f.read()


ALL = _gin_files()
_INCLUDED = {m for f in ALL for m in re.findall(r"^include\s+['\"](.+?)['\"]", _read(f), re.M)}
# An experiment is a file under experiments/ that no other file includes; the rest are
# pieces (models/, runs/, experiments/common/, a demo's shared settings).
# MTF files first: they represent their program structure (below) with the longest inputs
# and dropout on.
EXPERIMENTS = sorted((f for f in ALL if f.startswith("experiments/") and f not in _INCLUDED),
                     key=lambda f: ("mtf_" not in f, f))
PIECES = [f for f in ALL if f not in EXPERIMENTS]
_REQUIRED = sorted({m for f in ALL
                    for m in re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*%gin\.REQUIRED", _read(f), re.M)})


@pytest.fixture(autouse=True)
def _fresh_gin():
  yield
  gin.clear_config()


def _is_unfilled(macro: str) -> bool:
  try:
    return repr(gin.query_parameter(f"%{macro}")) == "%gin.REQUIRED"
  except ValueError:  # not defined by these files
    return False


def _check_registrations() -> list[str]:
  """Each entry of experiment.task_registrations is a task-registration function with all
  its arguments bound; returns their names and unbinds them (they would read data)."""
  try:
    refs = gin.query_parameter("experiment.task_registrations")
  except ValueError:
    return []
  names = []
  for ref in refs:
    assert isinstance(ref, gin.config.ConfigurableReference) and not ref.evaluate, (
        f"experiment.task_registrations holds {ref!r}; expected e.g. [@tasks.sni.register]")
    fn = ref.configurable.wrapped
    assert fn.__module__.startswith("tasks."), f"{ref!r} is not a task registration"
    inspect.signature(fn).bind(**gin.get_bindings(fn))  # every argument without a default bound
    names.append(f"{fn.__module__}.{fn.__name__}")
  gin.bind_parameter("experiment.task_registrations", [])
  return names


def _configure(files: list[str]) -> tuple[runs.Experiment, list[str]]:
  """Parses `files`, fills required macros with dummies, checks every binding and reference
  (gin.finalize), and builds the Experiment."""
  main.parse_gin(files, [])
  fills = [f"{m} = '/dummy/{m.lower()}'" for m in _REQUIRED if _is_unfilled(m)]
  gin.parse_config(fills)
  registrations = _check_registrations()
  for fn in (runs.train, runs.evaluate, runs.infer, runs.export, runs.bench):
    gin.get_bindings(fn)  # resolves every macro the run modes would read
  gin.finalize()  # unknown configurables, undefined macros
  return runs.experiment(), registrations


@pytest.mark.parametrize("path", PIECES)
def test_piece_parses_and_binds_on_a_complete_config(path):
  exp, _ = _configure([LLAMA_BASE if "llama" in path else BASE, path])
  assert isinstance(exp, runs.Experiment)


# -- experiments ---------------------------------------------------------------------


def _test_mesh(cfg: partitioning.MeshConfig) -> partitioning.MeshConfig:
  """The experiment's mesh where it fits on 8 devices, else its axes shrunk to fit."""
  try:
    cfg.shape(NUM_DEVICES)
    return cfg
  except ValueError:
    model = cfg.model if cfg.model > 0 and NUM_DEVICES % cfg.model == 0 else 1
    fsdp = cfg.fsdp if cfg.fsdp > 0 else NUM_DEVICES
    return partitioning.MeshConfig(data=-1, fsdp=max(1, min(fsdp, NUM_DEVICES // model)),
                                   model=model)


def _abstract_batch(exp: runs.Experiment) -> dict:
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
          for k, shape in runs.batch_shapes(exp).items()}


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)


# One lowering per program structure (mode, T5 and HyperT5 configs but dropout, mesh): the
# experiments that differ only in data, lengths or dropout share it. Keeps this file ~1 min.
_LOWERED: dict = {}


def _structure(exp: runs.Experiment, mesh_cfg: partitioning.MeshConfig) -> tuple:
  obj = exp.objective
  if runs_llama.handles(exp):  # no dropout in a Llama: the whole config is the structure
    return obj.mode, obj.llama, obj.hyper, mesh_cfg
  t5_cfg = obj.t5.replace(dropout_rate=0.0)
  hyper = obj.hyper.replace(t5=t5_cfg) if obj.hyper else None
  return obj.mode, t5_cfg, hyper, mesh_cfg


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_builds_and_lowers_a_train_step_at_real_size(path):
  exp, registrations = _configure([path])
  obj = exp.objective
  if "_DATA_DIR" in _read(path) and not registrations:
    pytest.fail(f"{path} names a data directory but registers no tasks")
  mesh_cfg = _test_mesh(exp.mesh)
  key = _structure(exp, mesh_cfg)
  if key in _LOWERED:
    pytest.skip(f"same program structure as {_LOWERED[key]}, lowered there")
  _LOWERED[key] = path

  mesh = partitioning.make_mesh(mesh_cfg)
  opt = (runs_llama.optimizer(exp) if runs_llama.handles(exp) else optimizers.make_optimizer(
      exp.optimizer, optimizers.hyper_new_params if obj.mode == "hyper" else None))
  state_sh = train_step.state_shardings(obj, opt, mesh)
  frozen_sh = train_step.frozen_shardings(obj, mesh)
  trainable = nn.unbox(obj.abstract_trainable())
  frozen = nn.unbox(obj.abstract_frozen())
  # What init produces (from the downstream checkpoint's shapes) is what the step expects.
  downstream = obj.downstream(trainable, frozen)
  initialised = jax.eval_shape(lambda d: obj.init(jax.random.key(0), d)[0], downstream)
  assert _shapes(initialised) == _shapes(trainable)
  state = jax.eval_shape(
      functools.partial(train_step.create_train_state, opt, rng=jax.random.key(0)), trainable)

  batch = _abstract_batch(exp)
  step = train_step.make_train_step(obj, opt, exp.trainer.microbatches,
                                    exp.trainer.enable_dropout)
  with jax.set_mesh(mesh), partitioning.axis_rules():
    jitted = train_step.jit_train_step(step, mesh, state_sh, frozen_sh, batch)
    lowered = jitted.lower(state, frozen, batch)
  new_state, metrics = lowered.out_info
  assert metrics["loss"].shape == () and _shapes(new_state.params) == _shapes(trainable)


def test_registrations_run_when_the_experiment_is_built(tmp_path):
  """The hook end to end: experiment() calls the bound register function, so MIXTURE
  exists before any run mode looks it up."""
  import seqio
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks"))
  import task_fixtures  # pylint: disable=import-outside-toplevel
  root = task_fixtures.write_sni(tmp_path / "ni")
  for name in ("sni_train", "sni_test"):
    seqio.MixtureRegistry.remove(name)
  main.parse_gin(["experiments/mtf_sni_large_lora.gin"], [
      f"MODEL_DIR = '{tmp_path}'", "DOWNSTREAM_CHECKPOINT = '/dummy'",
      f"SNI_DATA_DIR = '{root}'", "VOCABULARY = 'byte'"])
  exp = runs.experiment()
  assert exp.mixture == "sni_train" and exp.eval_mixture == "sni_test"
  assert len(seqio.get_mixture_or_task("sni_train").tasks) == 2
  assert [t.name for t in seqio.get_mixture_or_task("sni_test").tasks] == ["sni_task003_c"]


@pytest.mark.parametrize("bindings, message", [
    (["DOWNSTREAM_CHECKPOINT = '/dummy'"],
     "SNI_DATA_DIR is required by tasks.sni.register(data_dir=...)"),
    (["DOWNSTREAM_CHECKPOINT = '/dummy'", "SNI_DATA_DIR = '/nonexistent/ni'"],
     "/nonexistent/ni: no S-NI task files"),
    (["SNI_DATA_DIR = '/nonexistent/ni'"], "DOWNSTREAM_CHECKPOINT is required"),
])
def test_unset_macros_and_bad_data_dirs_are_usage_errors(bindings, message):
  main.parse_gin(["experiments/mtf_sni_large_lora.gin"], ["MODEL_DIR = '/tmp/unused'", *bindings])
  with pytest.raises(UsageError, match=re.escape(message)):
    runs.experiment()


def test_the_paper_setups_are_all_there():
  setups = [f"hyperpretrain_{size}_{peft}" for size in ("large", "xl") for peft in ("prefix", "lora")]
  setups += [f"{stage}_{data}_{size}_{peft}" for stage in ("mtf",)
             for data in ("p3", "sni", "metaicl") for size in ("large", "xl")
             for peft in ("prefix", "lora")]
  setups += [f"baseline_{kind}_{data}_{size}" for kind in ("t5mtf", "icl")
             for data in ("p3", "sni", "metaicl") for size in ("large", "xl")]
  setups += [f"hyperinit_p3_{size}_{peft}" for size in ("large", "xl") for peft in ("prefix", "lora")]
  missing = [s for s in setups if f"experiments/{s}.gin" not in EXPERIMENTS]
  assert not missing
