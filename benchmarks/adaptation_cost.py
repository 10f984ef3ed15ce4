"""Adaptation cost: HyperT5 generating a task's parameters vs tuning them by gradient descent.

For held-out tasks of the synthetic family (issue #6, item 4), after a demo run
(`python -m hypert5.demo --out DIR`):

  nice -n 10 .venv/bin/python benchmarks/adaptation_cost.py --demo_dir DIR --tasks 4 --kind lora

1. HyperT5 side. The trained hypermodel (DIR/runs/hyper_<kind>, restored through its gin
   file gin/experiments/demo_hyper_<kind>.gin + MODEL_DIR, as `hypert5 eval` restores it)
   reads the task's K examples once and emits its LoRA (or prefix). Timed: one jitted
   hypermodel forward (batch 1), compile time separate from the steady-state time (median
   of --repeats calls, each ending in block_until_ready). FLOPs: analytic, the hypermodel's
   encoder over hyper_inputs + its decoder over the num_queries learned queries
   (flops.t5_forward_flops, as flops.step_flops counts the hyper part; generator heads not
   counted), and XLA's own count of the compiled program as a cross-check.
   Score: exact match on the task's validation queries, the frozen downstream with those
   parameters, greedy decoding.
2. Tuning side. The same frozen downstream, the same PEFT shapes (rank, alpha, targets /
   prefix length from the hyper run's HyperT5Config), from random values (LoRA: B = 0, as
   PEFT; prefix: N(0, 1), as modes.Objective.random_peft), AdamW (optimizers.make_optimizer,
   constant schedule, global-norm clipping 1.0) on the task's train split (plain mode: bare
   queries, 256 rows), batch --batch_size. Validation exact match every --eval_every steps
   (and at step 0) until it reaches HyperT5's score or --max_steps. Timed: the training
   steps only (compile and evaluation reported separately; the batches are prepared in
   numpy beforehand). FLOPs: flops.step_flops(kind, ...) per step x steps, and XLA's count.
   Every learning rate in --lrs is run; the headline takes, per task, the one that reached
   the target in the fewest steps (the best case for tuning; the sweep itself is not
   charged to it). `--tune_kind` tunes the other kind against the same target (e.g. LoRA
   tuning until it matches HyperT5-Prefix's score).
   The target is HyperT5's validation score, and tuning is stopped on that same split: an
   early-stopping oracle that favours tuning. If the frozen model with the initial values
   already scores that much (HyperT5 no better than zero-shot), tuning "reaches" it at
   step 0 and the ratios are 0.
3. Scorer: one evaluation.Predictor (jitted greedy decode with a KV cache) and one
   token-level exact match (outputs and targets cut at EOS) serve both sides; the hyper
   score is also compared with the demo's own seqio evaluation of that task when the demo
   wrote one (DIR/runs/hyper_<kind>/eval/metrics_<step>.json).

Prints a table per task and the mean; writes JSON to --out (default
out/adaptation_cost.json). Ratios are tuning / HyperT5: above 1 means HyperT5 is cheaper.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from hypert5 import decoding  # noqa: E402
from hypert5.training import evaluation, flops, modes, optimizers  # noqa: E402
from hypert5.training import train_step as train_step_lib  # noqa: E402

log = logging.getLogger("adaptation_cost")

TRAIN_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights")


# -- data ------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskData:
  """One held-out task as arrays: its K-shot text, validation queries, tuning rows."""
  name: str                           # the plain-mode task (tuning data)
  hyper_name: str                     # the hyper-mode task (K-shot text)
  hyper_tokens: np.ndarray            # [1, hyper_len]: the fixed K examples, hyper-encoded
  val_inputs: np.ndarray              # [n_val, inputs_len]: bare queries
  val_targets: np.ndarray             # [n_val, targets_len]: targets + EOS, 0-padded
  train: dict[str, np.ndarray]        # TRAIN_KEYS -> [n_train, len]: the train split, plain


def _features(task: str, lengths: dict, split: str) -> dict[str, np.ndarray]:
  import seqio
  from hypert5.data import converters
  ds = seqio.get_dataset(task, lengths, converters.converter_for(task, pack=False),
                         dataset_split=split, shuffle=False, num_epochs=1, verbose=False)
  rows = list(ds.as_numpy_iterator())
  if not rows:
    raise ValueError(f"{task}: empty {split} split")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_task(index: int, lengths: dict) -> TaskData:
  """Held-out synthetic task `index`: hyper-mode validation rows (K-shot text + query) and
  the plain-mode train split (bare queries) for tuning. `lengths` is the hyper run's
  task_feature_lengths."""
  import tasks  # noqa: F401  registers the synthetic family
  from tasks import synthetic
  hyper_name = synthetic.heldout_task_name(index, "hyper")
  plain_name = synthetic.heldout_task_name(index, "plain")
  val = _features(hyper_name, lengths, "validation")
  few_shot = val["hyper_encoder_input_tokens"]
  if not (few_shot == few_shot[0]).all():
    raise ValueError(f"{hyper_name}: validation rows do not share one K-shot set")
  plain_lengths = {k: lengths[k] for k in ("inputs", "targets")}
  plain_val = _features(plain_name, plain_lengths, "validation")
  if not np.array_equal(plain_val["encoder_input_tokens"], val["encoder_input_tokens"]):
    raise ValueError(f"{plain_name} and {hyper_name}: validation queries differ")
  train = _features(plain_name, plain_lengths, "train")
  return TaskData(plain_name, hyper_name, few_shot[:1], val["encoder_input_tokens"],
                  val["decoder_target_tokens"], {k: train[k] for k in TRAIN_KEYS})


def epoch_batches(train: dict[str, np.ndarray], batch_size: int, num_steps: int,
                  seed: int) -> list[dict[str, np.ndarray]]:
  """`num_steps` batches: shuffled epochs over the rows (remainders dropped), prepared in
  numpy before any timing."""
  n = len(next(iter(train.values())))
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training rows")
  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  out: list[dict[str, np.ndarray]] = []
  while len(out) < num_steps:
    order = rng.permutation(n)
    for b in range(per_epoch):
      idx = order[b * batch_size:(b + 1) * batch_size]
      out.append({k: v[idx] for k, v in train.items()})
  return out[:num_steps]


# -- scoring ---------------------------------------------------------------------------


def _cut(tokens: np.ndarray) -> tuple[int, ...]:
  ids = [int(t) for t in tokens]
  if decoding.EOS_ID in ids:
    ids = ids[:ids.index(decoding.EOS_ID)]
  return tuple(t for t in ids if t != 0)


def exact_match(predictions: np.ndarray, targets: np.ndarray) -> float:
  """Percent of rows whose output equals the target (both cut at EOS, padding dropped) —
  seqio's exact_match for a one-token-per-character vocabulary."""
  hits = [_cut(p) == _cut(t) for p, t in zip(predictions, targets)]
  return 100.0 * float(np.mean(hits))


class Scorer:
  """Greedy decoding with injected parameters + exact match; the same for both sides.

  Built on the tuning objective (mode lora / prefix: the downstream is `frozen`), so the
  hypermodel's output and the tuned parameters go through one jitted predict function.
  """

  def __init__(self, objective: modes.Objective, num_rows: int, max_decode_length: int):
    self.predictor = evaluation.Predictor(objective, num_rows, max_decode_length)

  def __call__(self, frozen, peft, inputs: np.ndarray, targets: np.ndarray) -> float:
    tokens = self.predictor.predict_batch({}, frozen, peft, {"encoder_input_tokens": inputs})
    return exact_match(tokens, targets)


# -- timing ----------------------------------------------------------------------------


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (None where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001  backends differ; the analytic count is the headline
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  value = (cost or {}).get("flops")
  return float(value) if value is not None and value >= 0 else None


def time_calls(fn: Callable, args: tuple, repeats: int) -> dict:
  """AOT-compiles `fn` for `args` (timed), then times `repeats` calls, each ending in
  block_until_ready. The first call after compiling is reported on its own."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {"compile_s": compile_s, "first_call_s": first_s,
          "steady_s": statistics.median(times), "min_s": min(times), "times_s": times,
          "xla_flops": xla_flops(compiled), "output": out}


# -- the two sides ---------------------------------------------------------------------


def hyper_analytic_flops(hyper: Any, hyper_len: int) -> float:
  """The hypermodel forward for one task: encoder over hyper_len few-shot tokens, decoder
  over num_queries learned queries, no output layer (generator heads not counted) — what
  flops.step_flops counts for the hyper part, without the backward pass."""
  return flops.t5_forward_flops(hyper.body, hyper_len, hyper.num_queries, logits=False)


def hyper_side(hyper_objective: modes.Objective, trainable, frozen, task: TaskData,
               scorer: Scorer, repeats: int = 20) -> dict:
  """Times generating the task's parameters from its K examples and scores them."""
  def generate(tr, fr, tokens):
    return hyper_objective.generate(tr, fr, {"hyper_encoder_input_tokens": tokens})
  timing = time_calls(generate, (trainable, frozen, task.hyper_tokens), repeats)
  peft = timing.pop("output")
  t0 = time.perf_counter()
  score = scorer(frozen, peft, task.val_inputs, task.val_targets)
  return {**timing, "exact_match": score, "eval_s": time.perf_counter() - t0,
          "flops": hyper_analytic_flops(hyper_objective.hyper, task.hyper_tokens.shape[1]),
          "hyper_len": int(task.hyper_tokens.shape[1]),
          "num_queries": hyper_objective.hyper.num_queries, "peft": peft}


def tuning_step_flops(objective: modes.Objective, batch_size: int, inputs_len: int,
                      targets_len: int) -> float:
  """flops.step_flops for one tuning step: frozen forward + activation gradients."""
  hyper = objective.hyper
  prefix_len = hyper.prefix_length if objective.mode == "prefix" else 0
  return flops.step_flops(objective.mode, objective.t5, batch_size, inputs_len, targets_len,
                          prefix_len=prefix_len)


_STEPS: dict = {}  # (objective, optimizer settings, shapes) -> (compiled step, compile s)


def _compiled_step(objective, opt, opt_key, state, frozen, batch):
  """The jitted, donated train step, AOT-compiled once per objective, optimizer settings
  and batch shape (tasks share it); returns (compiled, compile seconds, cached?)."""
  key = (objective, opt_key, tuple((k, v.shape) for k, v in sorted(batch.items())))
  if key in _STEPS:
    return (*_STEPS[key], True)
  step_fn = train_step_lib.make_train_step(objective, opt, enable_dropout=False)
  t0 = time.perf_counter()
  compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, frozen, batch).compile()
  _STEPS[key] = (compiled, time.perf_counter() - t0)
  return (*_STEPS[key], False)


def tune(objective: modes.Objective, frozen, task: TaskData, scorer: Scorer, target: float,
         learning_rate: float, max_steps: int = 300, eval_every: int = 5,
         batch_size: int = 32, warmup_steps: int = 1, seed: int = 0) -> dict:
  """Tunes one task's parameters from random values until validation exact match reaches
  `target` (checked at step 0 and every `eval_every` steps) or `max_steps`.

  `train_s` counts the training steps only (host-side batch transfer included, compile
  and evaluation excluded): the time up to the evaluation that first reached the target.
  `compile_s` is the step's compile time (measured when first compiled; later tasks with
  the same settings reuse the program, `compile_reused`).
  """
  opt = optimizers.make_optimizer(optimizers.OptimizerConfig(
      name="adamw", learning_rate=learning_rate, schedule="constant",
      warmup_steps=warmup_steps, weight_decay=0.0, clip_norm=1.0))
  params = objective.random_peft(jax.random.key(seed))
  state = train_step_lib.create_train_state(opt, params, jax.random.key(seed + 1))
  batches = epoch_batches(task.train, batch_size, max_steps, seed)
  compiled, compile_s, cached = _compiled_step(objective, opt, (learning_rate, warmup_steps),
                                               state, frozen, batches[0])
  per_step = tuning_step_flops(objective, batch_size, task.train["encoder_input_tokens"].shape[1],
                               task.train["decoder_target_tokens"].shape[1])

  curve, train_s, eval_s, eval_compile_s, loss = [], 0.0, 0.0, None, float("nan")
  reached_step = reached_train_s = None
  best = -1.0
  step = 0
  while True:
    t0 = time.perf_counter()
    score = scorer(frozen, state.params, task.val_inputs, task.val_targets)
    dt = time.perf_counter() - t0
    if eval_compile_s is None:  # the first evaluation may compile the decoder
      eval_compile_s = dt
    eval_s += dt
    best = max(best, score)
    curve.append({"step": step, "exact_match": score, "loss": loss, "train_s": train_s})
    if score >= target:
      reached_step, reached_train_s = step, train_s
      break
    if step >= max_steps:
      break
    segment = min(eval_every, max_steps - step)
    t0 = time.perf_counter()
    for batch in batches[step:step + segment]:
      state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    train_s += time.perf_counter() - t0
    step += segment
    loss = float(metrics["loss"])
  reached = reached_step is not None
  steps = reached_step if reached else step
  return {
      "learning_rate": learning_rate, "reached": reached, "steps": steps,
      "train_s": reached_train_s if reached else train_s,
      "compile_s": compile_s, "compile_reused": cached, "eval_s": eval_s,
      "eval_first_call_s": eval_compile_s,
      "evals": len(curve), "flops_per_step": per_step, "flops": per_step * steps,
      "xla_flops_per_step": xla_flops(compiled), "best_exact_match": best,
      "step0_exact_match": curve[0]["exact_match"], "curve": curve,
      "max_steps": max_steps, "eval_every": eval_every, "batch_size": batch_size,
      "warmup_steps": warmup_steps,
  }


def _ratio(num: float | None, den: float | None) -> float | None:
  if num is None or not den:
    return None
  return num / den


def compare(hyper: dict, runs: Sequence[dict]) -> dict:
  """One task's row: the hyper side and the best tuning run (fewest steps to the target;
  none reached: the longest-trained, whose ratios are lower bounds)."""
  reached = [r for r in runs if r["reached"]]
  best = (min(reached, key=lambda r: (r["steps"], r["train_s"])) if reached else
          max(runs, key=lambda r: (r["best_exact_match"], -r["learning_rate"])))
  hyper_total = hyper["compile_s"] + hyper["steady_s"]
  tune_total = best["compile_s"] + best["train_s"]
  return {
      "hyper_exact_match": hyper["exact_match"], "reached": best["reached"],
      "best_learning_rate": best["learning_rate"], "tuning_steps": best["steps"],
      "tuning_train_s": best["train_s"], "tuning_flops": best["flops"],
      "hyper_steady_s": hyper["steady_s"], "hyper_flops": hyper["flops"],
      "hyper_compile_s": hyper["compile_s"], "tuning_compile_s": best["compile_s"],
      "tuning_eval_s": best["eval_s"],
      # tuning / HyperT5; when the target was not reached these are lower bounds.
      "time_ratio": _ratio(best["train_s"], hyper["steady_s"]),
      "time_ratio_with_compile": _ratio(tune_total, hyper_total),
      "flops_ratio": _ratio(best["flops"], hyper["flops"]),
      "ratios_are_lower_bounds": not best["reached"],
  }


def summarize(rows: Sequence[dict]) -> dict:
  """Means over tasks; ratios as the ratio of mean costs and as the mean/min of ratios."""
  mean = lambda key: float(np.mean([r[key] for r in rows]))
  ratios = [r["time_ratio"] for r in rows if r["time_ratio"] is not None]
  return {
      "tasks": len(rows), "reached": sum(r["reached"] for r in rows),
      # a task that did not reach the target counts with its capped cost: means and ratios
      # are then lower bounds
      "ratios_are_lower_bounds": any(r["ratios_are_lower_bounds"] for r in rows),
      "hyper_exact_match": mean("hyper_exact_match"), "tuning_steps": mean("tuning_steps"),
      "hyper_steady_s": mean("hyper_steady_s"), "tuning_train_s": mean("tuning_train_s"),
      "hyper_flops": mean("hyper_flops"), "tuning_flops": mean("tuning_flops"),
      "hyper_compile_s": mean("hyper_compile_s"), "tuning_compile_s": mean("tuning_compile_s"),
      "tuning_eval_s": mean("tuning_eval_s"),
      "time_ratio_of_means": _ratio(mean("tuning_train_s"), mean("hyper_steady_s")),
      "time_ratio_with_compile_of_means": _ratio(
          mean("tuning_compile_s") + mean("tuning_train_s"),
          mean("hyper_compile_s") + mean("hyper_steady_s")),
      "flops_ratio_of_means": _ratio(mean("tuning_flops"), mean("hyper_flops")),
      "time_ratio_min": min(ratios) if ratios else None,
      "time_ratio_median": float(np.median(ratios)) if ratios else None,
  }


def _fmt(x, spec: str = ".3g") -> str:
  return "-" if x is None else format(x, spec)


def format_table(rows: dict[str, dict], summary: dict) -> str:
  head = (f"{'task':<28} {'hyper EM':>8} {'hyper s':>9} {'hyper FLOPs':>11} {'LR':>6} "
          f"{'steps':>6} {'tune s':>8} {'tune FLOPs':>10} {'time x':>8} {'FLOPs x':>8}")
  lines = [head, "-" * len(head)]
  for name, r in rows.items():
    lb = ">=" if r["ratios_are_lower_bounds"] else ""
    steps = f"{r['tuning_steps']}" + ("" if r["reached"] else "*")
    lines.append(
        f"{name:<28} {r['hyper_exact_match']:>8.1f} {r['hyper_steady_s']:>9.2e} "
        f"{r['hyper_flops']:>11.3g} {r['best_learning_rate']:>6.0e} {steps:>6} "
        f"{r['tuning_train_s']:>8.3f} {r['tuning_flops']:>10.3g} "
        f"{lb + _fmt(r['time_ratio'], '.0f'):>8} {lb + _fmt(r['flops_ratio'], '.0f'):>8}")
  s = summary
  lb = ">=" if s["ratios_are_lower_bounds"] else ""
  lines.append("-" * len(head))
  lines.append(
      f"{'mean':<28} {s['hyper_exact_match']:>8.1f} {s['hyper_steady_s']:>9.2e} "
      f"{s['hyper_flops']:>11.3g} {'':>6} {lb + format(s['tuning_steps'], '.1f'):>6} "
      f"{s['tuning_train_s']:>8.3f} {s['tuning_flops']:>10.3g} "
      f"{lb + _fmt(s['time_ratio_of_means'], '.0f'):>8} "
      f"{lb + _fmt(s['flops_ratio_of_means'], '.0f'):>8}")
  lines.append(
      f"first use, compile included: HyperT5 {s['hyper_compile_s']:.1f} + "
      f"{s['hyper_steady_s']:.2g} s vs tuning {s['tuning_compile_s']:.1f} + "
      f"{s['tuning_train_s']:.2f} s -> {_fmt(s['time_ratio_with_compile_of_means'], '.1f')}x; "
      f"tuning's validation evals (not counted above): {s['tuning_eval_s']:.2f} s per task")
  lines.append("EM: validation exact match (%). time x / FLOPs x: tuning to HyperT5's score "
               "over one HyperT5 forward (steady state). * = not reached within the step cap "
               "(ratios are lower bounds).")
  return "\n".join(lines)


# -- the demo run ----------------------------------------------------------------------


def load_hyper_run(demo_dir: str, kind: str, extra_bindings: Sequence[str] = ()):
  """(experiment, trainable, frozen, step) of DIR/runs/hyper_<kind>, restored as `hypert5
  eval` restores it: its gin file, MODEL_DIR and the demo's frozen downstream."""
  from hypert5 import main, runs
  run_dir = os.path.join(demo_dir, "runs", f"hyper_{kind}")
  downstream = os.path.join(demo_dir, "runs", "downstream", "hf")
  for path in (run_dir, downstream):
    if not os.path.isdir(path):
      raise SystemExit(f"adaptation_cost: {path} not found; run `python -m hypert5.demo "
                       f"--out {demo_dir}` first (its hyper_{kind} stage must have finished)")
  main.parse_gin([f"experiments/demo_hyper_{kind}.gin"],
                 [f"MODEL_DIR='{run_dir}'", f"experiment.downstream_checkpoint='{downstream}'",
                  *extra_bindings])
  from hypert5.usage import UsageError
  try:
    exp = runs.experiment()
    trainable, frozen, step = runs.restore_trainable(exp)
  except UsageError as e:
    raise SystemExit(f"adaptation_cost: {e}") from e
  return exp, trainable, frozen, step


def demo_seqio_scores(demo_dir: str, kind: str) -> tuple[int | None, dict]:
  """The demo's own seqio exact match per held-out task (its latest eval), if written."""
  files = glob.glob(os.path.join(demo_dir, "runs", f"hyper_{kind}", "eval", "metrics_*.json"))
  if not files:
    return None, {}
  step = max(int(os.path.basename(f)[len("metrics_"):-len(".json")]) for f in files)
  with open(os.path.join(demo_dir, "runs", f"hyper_{kind}", "eval", f"metrics_{step}.json")) as f:
    metrics = json.load(f)
  return step, {k: v.get("exact_match") for k, v in metrics.items() if k != "mean"}


def _machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpus": os.cpu_count(), "device": jax.devices()[0].device_kind,
          "load_average": list(os.getloadavg()), "jax": jax.__version__,
          "nice": os.nice(0)}


def run_benchmark(demo_dir: str, kind: str = "lora", num_tasks: int = 4,
                  lrs: Sequence[float] = (3e-3, 1e-2, 3e-2), max_steps: int = 300,
                  eval_every: int = 5, batch_size: int = 32, warmup_steps: int = 1,
                  repeats: int = 20, seed: int = 0, extra_bindings: Sequence[str] = (),
                  tune_kind: str | None = None) -> dict:
  """`kind`: which hypermodel (DIR/runs/hyper_<kind>) sets the target; `tune_kind` (default:
  the same): what is tuned. Another kind than the hypermodel's takes its shapes from the
  hyper run's HyperT5Config with peft_type replaced (LoRA: rank, alpha and targets as bound
  there — the HyperT5Config defaults, the same as demo_hyper_lora.gin)."""
  tune_kind = tune_kind or kind
  machine_before = _machine()
  exp, trainable, frozen, hyper_step = load_hyper_run(demo_dir, kind, extra_bindings)
  hyper_obj = exp.objective
  tune_hyper = (hyper_obj.hyper if tune_kind == kind else
                hyper_obj.hyper.replace(peft_type=tune_kind))
  tune_obj = modes.Objective(tune_kind, hyper_obj.t5, tune_hyper)
  lengths = exp.task_feature_lengths
  frozen = jax.device_put(frozen)
  seqio_step, seqio_scores = demo_seqio_scores(demo_dir, kind)
  rows, details = {}, {}
  scorers: dict[int, Scorer] = {}  # one jitted decoder per validation size, shared
  for i in range(num_tasks):
    task = load_task(i, lengths)
    n_val = len(task.val_inputs)
    if n_val not in scorers:
      scorers[n_val] = Scorer(tune_obj, n_val, lengths["targets"])
    scorer = scorers[n_val]
    hyper = hyper_side(hyper_obj, trainable, frozen, task, scorer, repeats)
    hyper.pop("peft")
    log.info("%s: HyperT5 exact match %.1f, %.2e s per forward (compile %.1f s)",
             task.name, hyper["exact_match"], hyper["steady_s"], hyper["compile_s"])
    tunings = []
    for lr in lrs:
      result = tune(tune_obj, frozen, task, scorer, hyper["exact_match"], lr, max_steps,
                    eval_every, batch_size, warmup_steps, seed + i)
      log.info("%s lr %g: %s at step %d (%.2f s of training; best exact match %.1f)",
               task.name, lr, "reached" if result["reached"] else "not reached",
               result["steps"], result["train_s"], result["best_exact_match"])
      tunings.append(result)
    hyper["demo_seqio_exact_match"] = seqio_scores.get(task.hyper_name)
    rows[task.name] = compare(hyper, tunings)
    details[task.name] = {"hyper": hyper, "tuning": tunings}
  summary = summarize(list(rows.values()))
  return {
      "benchmark": "adaptation cost: HyperT5 forward vs PEFT tuning to equal held-out score",
      "kind": kind, "tune_kind": tune_kind, "demo_dir": os.path.abspath(demo_dir), "hyper_checkpoint_step": hyper_step,
      "demo_seqio_eval_step": seqio_step,
      "model": dataclasses.asdict(hyper_obj.t5),
      "hyper_config": {k: v for k, v in dataclasses.asdict(hyper_obj.hyper).items()
                       if k != "t5"},
      "tuned_shapes": ({"lora_rank": tune_hyper.lora_rank, "lora_alpha": tune_hyper.lora_alpha,
                        "lora_targets": tune_hyper.lora_targets} if tune_kind == "lora" else
                       {"prefix_length": tune_hyper.prefix_length,
                        "prefix_kinds": tune_hyper.prefix_kinds}),
      "tuned_params": modes.count_params(tune_obj.random_peft(jax.random.key(0))),
      "lengths": lengths,
      "settings": {"learning_rates": list(lrs), "max_steps": max_steps,
                   "eval_every": eval_every, "batch_size": batch_size,
                   "warmup_steps": warmup_steps, "repeats": repeats, "seed": seed,
                   "optimizer": "adamw (constant LR, global-norm clip 1.0, weight decay 0)"},
      "summary": summary, "rows": rows, "details": details,
      "machine_before": machine_before, "machine_after": _machine(),
  }


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--demo_dir", required=True, help="a `python -m hypert5.demo --out` DIR")
  p.add_argument("--tasks", type=int, default=4, help="held-out tasks 0..N-1")
  p.add_argument("--kind", choices=("lora", "prefix"), default="lora",
                 help="the hypermodel (DIR/runs/hyper_KIND) and, by default, what is tuned")
  p.add_argument("--tune_kind", choices=("lora", "prefix"), default=None,
                 help="tune this kind instead (e.g. LoRA tuning to HyperT5-Prefix's score)")
  p.add_argument("--lrs", default="3e-3,1e-2,3e-2", help="AdamW learning rates to try")
  p.add_argument("--max_steps", type=int, default=300)
  p.add_argument("--eval_every", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--warmup_steps", type=int, default=1,
                 help="linear warm-up (the schedule's minimum, 1, makes step 0's update 0)")
  p.add_argument("--repeats", type=int, default=20, help="timed HyperT5 forwards per task")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(REPO, "out", "adaptation_cost.json"))
  args = p.parse_args([a for a in argv if not a.startswith("--gin.")])
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
  log.setLevel(logging.INFO)
  result = run_benchmark(args.demo_dir, args.kind, args.tasks,
                         [float(x) for x in args.lrs.split(",")], args.max_steps,
                         args.eval_every, args.batch_size, args.warmup_steps, args.repeats,
                         args.seed, extra, args.tune_kind)
  print(f"HyperT5-{ {'lora': 'LoRA', 'prefix': 'Prefix'}[args.kind]} vs {result['tune_kind']} tuning from random "
        f"values ({result['tuned_params']:,} parameters), {args.demo_dir}")
  print(format_table(result["rows"], result["summary"]))
  s = result["summary"]
  print(f"load average before {result['machine_before']['load_average']}, after "
        f"{result['machine_after']['load_average']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2, default=_json_default)
  print(f"wrote {args.out} ({s['reached']}/{s['tasks']} tasks reached HyperT5's score)")
  return 0


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, tuple):
    return list(x)
  return str(x)


if __name__ == "__main__":
  sys.exit(main())
