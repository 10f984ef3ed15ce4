"""The small real-data run (issue #6 item 5): corpus -> BIG-bench, tiny T5, T5 vocabulary.

Stages, each a `hypert5` command on a gin experiment (gin/experiments/realdata_tiny_*.gin):

  downstream     a tiny T5 (T5's SentencePiece vocabulary) trained from random weights on
                 ../shared/data/corpus (text_caclm's B -> C, mode full); frozen afterwards
  zeroshot       that T5 evaluated on the held-out BIG-bench tasks, query alone
  hyperpretrain  HyperT5-LoRA hyperpretrained with CACLM on the corpus (text_caclm)
  mtf            HyperT5-LoRA multi-task trained on bigbench_train, starting from
                 hyperpretrain (experiment.init_from), then evaluated on bigbench_heldout
  mtf_nohp       the same without hyperpretraining (hypermodel copied from the downstream)

Writes OUT/table.json and OUT/table.md (per held-out task and means, with chance for the
multiple-choice tasks), OUT/timings.json, every run's MODEL_DIR under OUT/runs/ and each
command's log under OUT/logs/. A stage whose output exists is skipped (rerun to resume;
--fresh starts over). Run from the repository root:

  nice -n 10 .venv/bin/python benchmarks/realdata_run.py [--out out/realdata]
      [--steps_scale 1.0] [--skip mtf_nohp] [--gin.NAME=VALUE ...]

--gin.NAME=VALUE flags reach every stage (e.g. --gin.hypert5.get_config.name="'small'").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYPERT5 = os.path.join(ROOT, ".venv", "bin", "hypert5")
STEPS = {"downstream": 300, "hyperpretrain": 250, "mtf": 200, "mtf_nohp": 200}
STAGES = ("downstream", "zeroshot", "hyperpretrain", "mtf", "mtf_nohp")
ROWS = (("zeroshot", "Zero-shot frozen downstream T5 (query alone)"),
        ("mtf", "HyperT5-LoRA, hyperpretrained + MTF"),
        ("mtf_nohp", "HyperT5-LoRA, MTF only (no hyperpretraining)"))


def _gin(name: str, value: str) -> str:
  return f"--gin.{name}={value}"


def _quote(path: str) -> str:
  return repr(path)


def run(cmd: list[str], log_path: str) -> float:
  """Runs one hypert5 command (its output to log_path); returns its wall time."""
  print("+", " ".join(cmd), flush=True)
  start = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  wall = time.time() - start
  if proc.returncode:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f"command failed (rc {proc.returncode}); log {log_path}:\n{tail}")
  print(f"  done in {wall:.0f} s", flush=True)
  return wall


def latest_metrics(model_dir: str) -> dict | None:
  eval_dir = os.path.join(model_dir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  files = sorted((f for f in os.listdir(eval_dir) if f.startswith("metrics_")),
                 key=lambda f: int(f[len("metrics_"):-len(".json")]))
  if not files:
    return None
  with open(os.path.join(eval_dir, files[-1])) as f:
    return json.load(f)


def losses(model_dir: str) -> dict:
  path = os.path.join(model_dir, "train_log.jsonl")
  if not os.path.exists(path):
    return {}
  rows = [json.loads(line) for line in open(path) if line.strip()]
  rows = [r for r in rows if "loss" in r]
  if not rows:
    return {}
  tail = rows[-5:]
  return {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"],
          "last_loss": rows[-1]["loss"],
          "last_5_logged_mean": sum(r["loss"] for r in tail) / len(tail)}


def chance(bigbench_path: str, heldout: list[str], k: int, max_examples: int) -> dict:
  """Per held-out multiple-choice task: mean of 1 / #choices over its evaluated queries, in
  percent (as seqio's metrics here)."""
  sys.path.insert(0, ROOT)
  from tasks import bigbench  # pylint: disable=import-outside-toplevel
  from hypert5.data.preprocessors import ANSWER_CHOICES
  out = {}
  for name, file, obj in bigbench.read_tasks(bigbench_path):
    if name not in heldout:
      continue
    task = bigbench.parse_task(name, file, obj, k)
    rows = bigbench._rows(task, name, k, 0, max_examples, "validation")  # pylint: disable=protected-access
    out[name] = {"queries": len(rows), "multiple_choice": task["multiple_choice"]}
    if task["multiple_choice"]:
      out[name]["chance_accuracy"] = 100 * sum(1 / len(r[ANSWER_CHOICES]) for r in rows) / len(rows)
  return out


def write_table(out: str, info: dict) -> None:
  results = {key: latest_metrics(os.path.join(out, "runs", key)) for key, _ in ROWS}
  results = {k: v for k, v in results.items() if v}
  tasks = sorted({t for r in results.values() for t in r if t != "mean"})
  # Task names differ per mode (bigbench_plain_x vs bigbench_x): key rows by the BIG-bench name.
  def short(t):
    return t.replace("bigbench_plain_", "").replace("bigbench_", "")
  by_task: dict[str, dict] = {}
  for key, res in results.items():
    for t, metrics in res.items():
      if t != "mean":
        by_task.setdefault(short(t), {})[key] = metrics
  keys = [k for k, _ in ROWS if k in results]
  meta = info.get("chance", {})
  lines = ["| held-out task | metric | chance | " + " | ".join(keys) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
  mc_means = {k: [] for k in keys}
  gen_means = {k: [] for k in keys}
  chances = []
  for task in sorted(by_task):
    metrics = sorted({m for r in by_task[task].values() for m in r})
    c = meta.get(task.replace(".", "/"), meta.get(task, {})).get("chance_accuracy")
    for m in metrics:
      cells = []
      for k in keys:
        v = by_task[task].get(k, {}).get(m)
        cells.append("-" if v is None else f"{v:.1f}")
        if v is not None and m == "accuracy":
          mc_means[k].append(v)
        if v is not None and m == "exact_match":
          gen_means[k].append(v)
      if m == "accuracy" and c is not None:
        chances.append(c)
      lines.append(f"| {task} | {m} | {'-' if c is None or m != 'accuracy' else f'{c:.1f}'} | "
                   + " | ".join(cells) + " |")
  mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
  lines.append(f"| **mean, multiple choice ({len(chances)} tasks)** | accuracy | "
               f"{mean(chances):.1f} | " + " | ".join(f"{mean(mc_means[k]):.1f}" for k in keys)
               + " |")
  lines.append("| **mean, generative** | exact_match | - | "
               + " | ".join(f"{mean(gen_means[k]):.1f}" for k in keys) + " |")
  legend = "\n".join(f"- `{k}`: {label}" for k, label in ROWS if k in results)
  table = "\n".join(lines) + "\n\n" + legend + "\n"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table)
  summary = {"rows": {k: dict(label=label, mean_mc_accuracy=mean(mc_means.get(k, [])),
                              mean_generative_exact_match=mean(gen_means.get(k, [])))
                      for k, label in ROWS if k in results},
             "chance_mean_mc_accuracy": mean(chances), "per_task": by_task,
             "train_losses": {s: losses(os.path.join(out, "runs", s))
                              for s in ("downstream", "hyperpretrain", "mtf", "mtf_nohp")},
             **info}
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True, default=str)
  print(table)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="out/realdata")
  p.add_argument("--steps_scale", type=float, default=1.0,
                 help="multiplies every stage's step count")
  p.add_argument("--skip", action="append", default=[], choices=STAGES)
  p.add_argument("--fresh", action="store_true", help="delete OUT/runs first")
  p.add_argument("--table_only", action="store_true")
  args, extra = p.parse_known_args(argv)
  for e in extra:
    if not e.startswith("--gin."):
      p.error(f"unknown flag {e}")
  out = os.path.abspath(os.path.join(ROOT, args.out))
  runs, logs = os.path.join(out, "runs"), os.path.join(out, "logs")
  if args.fresh and os.path.isdir(runs):
    shutil.rmtree(runs)
  os.makedirs(runs, exist_ok=True)
  os.makedirs(logs, exist_ok=True)
  timings_path = os.path.join(out, "timings.json")
  timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
  d = lambda s: os.path.join(runs, s)
  steps = {s: max(1, round(n * args.steps_scale)) for s, n in STEPS.items()}
  downstream_hf = os.path.join(d("downstream"), "hf")

  def stage(name, done, gin_files, bindings, mode="train"):
    if name in args.skip:
      print(f"skip {name}")
      return
    if done():
      print(f"{name}: already done, skipped")
      return
    cmd = [HYPERT5, mode] + [f"--gin_file={g}" for g in gin_files] + bindings + extra
    timings[name] = run(cmd, os.path.join(logs, f"{name}.log"))
    with open(timings_path, "w") as f:
      json.dump(timings, f, indent=2)

  load_before = os.getloadavg()
  t0 = time.time()
  if not args.table_only:
    stage("downstream", lambda: os.path.exists(os.path.join(downstream_hf, "config.json")),
          ["experiments/realdata_tiny_downstream.gin"],
          [_gin("MODEL_DIR", _quote(d("downstream"))), _gin("STEPS", str(steps["downstream"]))])
    stage("zeroshot", lambda: latest_metrics(d("zeroshot")) is not None,
          ["experiments/realdata_tiny_zeroshot.gin"],
          [_gin("MODEL_DIR", _quote(d("downstream")))], mode="eval")
    # eval writes into the downstream run's MODEL_DIR/eval; keep a copy under runs/zeroshot.
    if latest_metrics(d("zeroshot")) is None and latest_metrics(d("downstream")):
      shutil.copytree(os.path.join(d("downstream"), "eval"), os.path.join(d("zeroshot"), "eval"))
    ds = _gin("DOWNSTREAM_CHECKPOINT", _quote(downstream_hf))
    stage("hyperpretrain", lambda: losses(d("hyperpretrain")).get("steps") == steps["hyperpretrain"],
          ["experiments/realdata_tiny_hyperpretrain.gin"],
          [_gin("MODEL_DIR", _quote(d("hyperpretrain"))), ds,
           _gin("STEPS", str(steps["hyperpretrain"]))])
    for name, init in (("mtf", d("hyperpretrain")), ("mtf_nohp", None)):
      common = [_gin("MODEL_DIR", _quote(d(name))), ds,
                _gin("INIT_FROM", _quote(init) if init else "None")]
      stage(name, lambda name=name: losses(d(name)).get("steps") == steps[name],
            ["experiments/realdata_tiny_mtf.gin"], common + [_gin("STEPS", str(steps[name]))])
      stage(f"{name}_eval", lambda name=name: latest_metrics(d(name)) is not None,
            ["experiments/realdata_tiny_mtf.gin", "runs/eval.gin"],
            common + [_gin("EVAL_MIXTURE", "'bigbench_heldout'")], mode="eval")
  heldout = _heldout_from_gin()
  info = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
          "steps": steps, "wall_s_this_invocation": time.time() - t0,
          "stage_wall_s": timings, "extra_gin": extra,
          "chance": chance(os.path.join(ROOT, "../shared/data/bigbench_tasks_first200.jsonl.gz"),
                           heldout, 3, 64)}
  write_table(out, info)
  return 0


def _heldout_from_gin() -> list[str]:
  """The held-out task names listed in gin/experiments/common/realdata_tiny.gin."""
  text = open(os.path.join(ROOT, "gin/experiments/common/realdata_tiny.gin")).read()
  body = text.split("tasks.bigbench.register.heldout = [", 1)[1].split("]", 1)[0]
  return [s.strip().strip("'\"") for s in body.replace("\n", " ").split(",") if s.strip()]


if __name__ == "__main__":
  sys.exit(main())
