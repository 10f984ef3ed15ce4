"""`make demo` / `python -m hypert5.demo`: the whole method on the synthetic family.

A sequence of hypert5 runs, each a gin experiment (gin/experiments/demo_*.gin), chained
in-process:

  1 downstream   T5 trained multi-task with the task description in its input (oracle
                 layout) in training mode peft_friendly (hypert5.training.modes); then
                 frozen
  2 icl          T5-MTF baseline: a T5 trained with the K examples in its input
  3 hyper        HyperT5-Prefix and HyperT5-LoRA on training tasks (examples only), each
                 row 4 queries of a task sharing one hypermodel forward (synthetic_train_q4)
  4 eval         held-out tasks through seqio: zero-shot frozen model (bare query),
                 T5-MTF in context, both hypermodels, oracle (description given)
  5 tune         prefix tuning of held-out task 0 from HyperT5-Prefix's output vs random
  6 export       held-out task 0's generated LoRA as a Hugging Face PEFT adapter

Writes OUT/table.json, OUT/tuning_curves.png, OUT/adapter/ (PEFT) and every run's
MODEL_DIR under OUT/runs/. `--quick` cuts steps and held-out tasks (the test runs it);
`--hyper_steps N` trains both HyperT5 stages for N steps (the hypermodels still learn at
2,000: see README);
`--gin.NAME=VALUE` flags reach every stage (e.g. a larger model).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence

log = logging.getLogger("hypert5.demo")

# (name, steps) per stage; --quick uses the second column.
STEPS = {"downstream": (10000, 40), "icl": (1000, 20), "hyper_prefix": (2000, 20),
         "hyper_lora": (2000, 20), "tune": (60, 8)}
HELDOUT = (32, 2)
ROWS = (("copy", "Reference: copy the query unchanged"),
        ("zero_shot", "Zero-shot frozen T5 (bare query)"),
        ("icl", "T5-MTF, examples in context"),
        ("hyper_prefix", "HyperT5-Prefix"),
        ("hyper_lora", "HyperT5-LoRA"),
        ("oracle", "Oracle (description given)"))


def _register_heldout(n: int) -> None:
  """demo_<mode>_heldout mixtures of the first n held-out tasks."""
  import seqio
  import tasks  # noqa: F401
  from tasks import synthetic
  from hypert5.data import pipelines
  for mode in pipelines.MODES:
    name = pipelines.task_name("demo", mode, "heldout")
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [synthetic.heldout_task_name(i, mode) for i in range(n)],
                              default_rate=1.0)


class Demo:
  def __init__(self, out: str, quick: bool, extra: Sequence[str],
               hyper_steps: int | None = None):
    self.out, self.quick, self.extra = os.path.abspath(out), quick, list(extra)
    self.hyper_steps = hyper_steps
    self.runs = os.path.join(self.out, "runs")

  def steps(self, stage: str) -> int:
    if self.hyper_steps and stage.startswith("hyper_"):
      return self.hyper_steps
    return STEPS[stage][1 if self.quick else 0]

  def configure(self, gin_files: Sequence[str], stage: str, *bindings: str) -> None:
    from hypert5 import main
    main.parse_gin(gin_files, [f"MODEL_DIR='{self._dir(stage)}'", *bindings, *self.extra])

  def run(self, mode: str, gin_files: Sequence[str], stage: str, *bindings: str):
    """`hypert5 MODE --gin_file=... --gin.MODEL_DIR=OUT/runs/STAGE ...`, in-process."""
    from hypert5 import main
    self.configure(gin_files, stage, *bindings)
    return main.run(mode)

  def _downstream(self) -> str:
    return f"experiment.downstream_checkpoint='{os.path.join(self._dir('downstream'), 'hf')}'"

  # -- stages ----------------------------------------------------------------------------

  def train_downstream(self) -> None:
    self.run("train", ["experiments/demo_downstream.gin"], "downstream",
             f"hypert5.TrainerConfig.num_steps={self.steps('downstream')}")

  def eval_downstream(self, mixture: str, inputs_len: int) -> dict:
    """The trained downstream T5 alone (no generated parameters) on a held-out mixture:
    bare queries (zero-shot) or description + query (oracle)."""
    return self.run("eval", ["experiments/demo_downstream.gin", "runs/eval.gin"], "downstream",
                    f"EVAL_MIXTURE='{mixture}'",
                    f"experiment.task_feature_lengths={{'inputs': {inputs_len}, "
                    "'targets': 11}")["mean"]

  def train_icl(self) -> dict:
    gin = ["experiments/demo_icl.gin"]
    self.run("train", gin, "icl", self._downstream(),
             f"hypert5.TrainerConfig.num_steps={self.steps('icl')}")
    return self.run("eval", gin + ["runs/eval.gin"], "icl",
                    "EVAL_MIXTURE='demo_icl_heldout'")["mean"]

  def train_hyper(self, kind: str) -> dict:
    stage = f"hyper_{kind}"
    gin = [f"experiments/demo_{stage}.gin"]
    self.run("train", gin, stage, self._downstream(),
             f"experiment.init_head_from='{self._dir('downstream')}'",
             f"hypert5.TrainerConfig.num_steps={self.steps(stage)}")
    return self.run("eval", gin + ["runs/eval.gin"], stage, self._downstream(),
                    "EVAL_MIXTURE='demo_heldout'")["mean"]

  def export(self, kind: str, formats: tuple[str, ...]) -> dict:
    """Held-out task 0's generated parameters from its K examples (`hypert5 export`)."""
    stage = f"hyper_{kind}"
    return self.run("export", [f"experiments/demo_{stage}.gin", "runs/export.gin"], stage,
                    self._downstream(), f"EXAMPLES_FILE='{self._examples_file()}'",
                    f"EXPORT_DIR='{os.path.join(self.out, 'export_' + kind)}'",
                    f"export.formats={formats!r}")

  def tune(self, name: str, initial: str | None) -> list[float]:
    """Prefix tuning on held-out task 0's train split; returns per-step losses."""
    stage = f"tune_{name}"
    self.run("train", ["experiments/demo_tune.gin"], stage, self._downstream(),
             "MIXTURE='synthetic_plain_heldout_000'",
             f"INITIAL_PEFT={initial!r}" if initial else "INITIAL_PEFT=None",
             f"hypert5.TrainerConfig.num_steps={self.steps('tune')}")
    losses = {}
    with open(os.path.join(self._dir(stage), "train_log.jsonl")) as f:
      for line in f:
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return [losses[s] for s in sorted(losses)]

  # -- helpers ---------------------------------------------------------------------------

  def _dir(self, stage: str) -> str:
    return os.path.join(self.runs, stage)

  def _examples_file(self) -> str:
    from tasks import synthetic
    member = synthetic.FAMILY.heldout_members[0]
    path = os.path.join(self.out, "heldout_000_examples.jsonl")
    with open(path, "w") as f:
      for x, y in synthetic.FAMILY.support(member):
        f.write(json.dumps({"input": x, "output": y}) + "\n")
    return path


def copy_reference(n: int) -> dict:
  """Exact match % of answering each held-out validation query with the query itself: the
  score of a model that copies and has learned nothing about the task (a member substitutes
  three of twelve letters, so short queries often contain none of them)."""
  from tasks import synthetic
  scores = []
  for member in synthetic.FAMILY.heldout_members[:n]:
    queries = synthetic.FAMILY.queries(member, "validation")
    scores.append(100.0 * sum(x == y for x, y in queries) / len(queries))
  return {"exact_match": sum(scores) / len(scores)}


def _steps_to(curve: list[float], target: float) -> int | None:
  return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def plot_curves(curves: dict[str, list[float]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    ax.plot(range(1, len(curve) + 1), curve, label=name)
  ax.set_xlabel("prefix-tuning step")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.set_title("Prefix tuning of held-out task 0")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def format_table(rows: dict[str, dict]) -> str:
  """Metrics in percent, as seqio's exact_match and rougeL report them."""
  lines = [f"{'method':<36} {'exact match %':>13} {'ROUGE-L':>8}", "-" * 59]
  for key, label in ROWS:
    m = rows[key]
    rouge = f"{m['rougeL']:.1f}" if "rougeL" in m else "-"
    lines.append(f"{label:<36} {m['exact_match']:>13.1f} {rouge:>8}")
  return "\n".join(lines)


def run_demo(out: str = "demo_out", quick: bool = False, extra: Sequence[str] = (),
             hyper_steps: int | None = None) -> dict:
  from tqdm import tqdm
  demo = Demo(out, quick, extra, hyper_steps)
  os.makedirs(demo.out, exist_ok=True)
  _register_heldout(HELDOUT[1 if quick else 0])
  t0 = time.perf_counter()
  rows, timings = {}, {}
  bar = tqdm(total=10, desc="demo", unit="stage", file=sys.stdout, dynamic_ncols=True)

  def stage(name: str, fn, *args):
    bar.set_postfix_str(name)
    start = time.perf_counter()
    result = fn(*args)
    timings[name] = round(time.perf_counter() - start, 1)
    bar.update(1)
    return result

  rows["copy"] = copy_reference(HELDOUT[1 if quick else 0])
  stage("train downstream", demo.train_downstream)
  rows["zero_shot"] = stage("eval zero-shot", demo.eval_downstream, "demo_plain_heldout", 11)
  rows["oracle"] = stage("eval oracle", demo.eval_downstream, "demo_oracle_heldout", 30)
  rows["icl"] = stage("train+eval T5-MTF icl", demo.train_icl)
  rows["hyper_prefix"] = stage("train+eval HyperT5-Prefix", demo.train_hyper, "prefix")
  rows["hyper_lora"] = stage("train+eval HyperT5-LoRA", demo.train_hyper, "lora")
  prefix = stage("export prefix", demo.export, "prefix", ("safetensors",))
  curves = {"hyper-init": stage("tune hyper-init", demo.tune, "hyper", prefix["safetensors"]),
            "random init": stage("tune random init", demo.tune, "random", None)}
  lora = stage("export LoRA adapter", demo.export, "lora", ("peft", "safetensors"))
  bar.close()

  plot_curves(curves, os.path.join(demo.out, "tuning_curves.png"))
  adapter = os.path.join(demo.out, "adapter")
  if os.path.exists(adapter):
    import shutil
    shutil.rmtree(adapter)
  os.replace(lora["peft"], adapter)
  random_final = min(curves["random init"][-3:])
  table = {
      "metric": "mean over held-out tasks (validation queries), percent",
      "heldout_tasks": HELDOUT[1 if quick else 0], "quick": quick,
      "steps": {stage: demo.steps(stage) for stage in STEPS},
      "rows": {key: {"label": label, **rows[key]} for key, label in ROWS},
      "tuning": {"task": "synthetic_plain_heldout_000", "curves": curves,
                 "random_final_loss": random_final,
                 "hyper_init_steps_to_random_final": _steps_to(curves["hyper-init"], random_final),
                 "random_steps": len(curves["random init"])},
      "adapter": adapter, "stage_seconds": timings,
      "wall_seconds": round(time.perf_counter() - t0, 1),
  }
  with open(os.path.join(demo.out, "table.json"), "w") as f:
    json.dump(table, f, indent=2)
  print("\n" + format_table(rows))
  t = table["tuning"]
  print(f"\nprefix tuning, held-out task 0: random init reaches loss {random_final:.3f} in "
        f"{t['random_steps']} steps; hyper-init reaches it in "
        f"{t['hyper_init_steps_to_random_final']} steps")
  print(f"wrote {demo.out}/table.json, tuning_curves.png, adapter/ "
        f"({table['wall_seconds']:.0f} s)")
  return table


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
  p = argparse.ArgumentParser(prog="python -m hypert5.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="demo_out")
  p.add_argument("--quick", action="store_true", help="few steps, 2 held-out tasks (tests)")
  p.add_argument("--hyper_steps", type=int, default=None,
                 help="training steps of both HyperT5 stages (default: STEPS)")
  args = p.parse_args([a for a in argv if not a.startswith("--gin.")])
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("hypert5").setLevel(logging.INFO)
  run_demo(args.out, args.quick, extra, args.hyper_steps)
  return 0


if __name__ == "__main__":
  sys.exit(main())
