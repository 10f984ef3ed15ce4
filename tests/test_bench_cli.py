"""`hypert5 bench` end to end at toy shapes (T5 HyperT5-LoRA and HyperLlama): the report's
fields, its arithmetic (tokens/s and TFLOP/s from the measured step time, the analytic FLOP
count) and the JSON file. Speed itself is the benchmark's business, not asserted here."""
import gzip
import json
import math
import os
import subprocess
import sys

import pytest
from scripts import load_script  # tests/helpers (pytest.ini pythonpath)

from hypert5 import main
from hypert5.training import flops

SMALL = ["--gin.bench.steps=2", "--gin.bench.warmup=1", "--gin.bench.input_batches=2",
         "--gin.bench.input_warmup=1", "--gin.experiment.batch_size=4",
         "--gin.hypert5.MeshConfig.data=1"]


def _argv(tmp_path, gin_file, lengths, *extra):
  return ["bench", f"--gin_file={gin_file}", "--gin_file=runs/bench.gin",
          f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.bench.output_file='{tmp_path}/bench.json'",
          f"--gin.experiment.task_feature_lengths={lengths}", *SMALL, *extra]


def _bench(tmp_path, gin_file, lengths, *extra):
  assert main.main(_argv(tmp_path, gin_file, lengths, *extra)) == 0
  return json.loads((tmp_path / "bench.json").read_text())


@pytest.mark.parametrize("gin_file,lengths,model", [
    ("experiments/synthetic_tiny.gin", {"hyper_inputs": 24, "inputs": 8, "targets": 6}, "t5"),
    ("experiments/hyperllama_synthetic_tiny.gin",
     {"hyper_inputs": 24, "inputs": 8, "targets": 6}, "llama"),
])
def test_bench_reports_consistent_throughput(tmp_path, gin_file, lengths, model):
  r = _bench(tmp_path, gin_file, lengths)
  assert r["mode"] == "hyper" and r["batch"] == 4 and r["devices"] >= 1
  assert r.get("model", "t5") == model
  assert r["step_time_s"] > 0 and r["trainable_params"] > 0
  assert r["model_tflops_per_step"] > 0
  # TFLOP/s per device is the analytic step FLOPs over the measured time.
  assert math.isclose(r["tflops_per_device"],
                      r["model_tflops_per_step"] / r["step_time_s"] / r["devices"], rel_tol=1e-6)
  peak, _ = flops.device_peak_flops()
  assert math.isclose(r["mfu"], r["tflops_per_device"] * 1e12 / peak, rel_tol=1e-6)
  # The input pipeline (MIXTURE's real batches, checked against the timed shapes) and how
  # many times faster it makes batches than the step consumes them.
  assert r["input_s_per_batch"] > 0 and r["input_warmup_s"] > 0 and r["input_build_s"] > 0
  assert math.isclose(r["input_headroom"], r["step_time_s"] / r["input_s_per_batch"],
                      rel_tol=1e-6)
  if model == "t5":  # tokens: the batch's encoder + decoder positions
    assert math.isclose(r["tokens_per_s"], 4 * (8 + 6) / r["step_time_s"], rel_tol=1e-6)
    assert r["lengths"] == lengths
  else:
    assert r["tokens_per_s"] > 0 and "decoder_input_tokens" in r["lengths"]


def test_bench_counts_every_query_of_rows_of_several(tmp_path):
  """HyperT5 rows of 4 queries (tasks.synthetic.register.queries_per_task): the timed batch
  and the pipeline's batches are [batch, 4, length]; tokens and the downstream's FLOPs count
  4 queries per row, the hypermodel's one forward per row."""
  from hypert5 import runs
  lengths = {"hyper_inputs": 24, "inputs": 8, "targets": 6}
  r = _bench(tmp_path, "experiments/synthetic_tiny.gin", lengths,
             "--gin.MIXTURE='synthetic_train_q4'",
             "--gin.tasks.synthetic.register.queries_per_task=4",
             "--gin.experiment.task_registrations=[@tasks.synthetic.register]")
  exp = runs.experiment()
  assert runs.batch_shapes(exp)["encoder_input_tokens"] == (4, 4, 8)
  assert math.isclose(r["tokens_per_s"], 4 * 4 * (8 + 6) / r["step_time_s"], rel_tol=1e-6)
  assert r["input_s_per_batch"] > 0  # the real batches matched the timed shapes
  obj = exp.objective
  args = (obj.t5, 4, 8, 6, 24, obj.hyper.num_queries, 0, obj.hyper.body)
  assert math.isclose(r["model_tflops_per_step"] * 1e12,
                      flops.step_flops("hyper", *args, queries_per_row=4), rel_tol=1e-6)
  assert (flops.step_flops("hyper", *args, queries_per_row=4) - flops.step_flops("hyper", *args)
          == 3 * 2 * 4 * flops.t5_forward_flops(obj.t5, 8, 6))  # 3 more queries per row


def test_bench_input_timing_fits_the_mode_or_says_what_to_do(tmp_path, capsys):
  """LoRA tuning's step on a few-shot MIXTURE (its hyper_inputs are not the step's
  business); lengths the MIXTURE cannot use are a one-line error naming the way out, and
  the step's timing is still written; input_batches=0 times the steps alone."""
  tiny, lora = "experiments/synthetic_tiny.gin", "--gin.experiment.mode='lora'"
  r = _bench(tmp_path, tiny, {"hyper_inputs": 24, "inputs": 8, "targets": 6}, lora)
  assert r["mode"] == "lora" and r["input_headroom"] > 0
  plain = {"inputs": 8, "targets": 6}
  (tmp_path / "bench.json").unlink()
  assert main.main(_argv(tmp_path, tiny, plain, lora)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "MIXTURE 'synthetic_train'" in err[0], err
  assert "--gin.bench.input_batches=0" in err[0]
  written = json.loads((tmp_path / "bench.json").read_text())
  assert written["step_time_s"] > 0 and "input_headroom" not in written
  r = _bench(tmp_path, tiny, plain, lora, "--gin.bench.input_batches=0")
  assert r["step_time_s"] > 0 and not any(k.startswith("input_") for k in r)


# Runs a script with the data stack unimportable, as on the lent GPU machines' image.
_WITHOUT_DATA_STACK = """
import importlib.abc, runpy, sys
class NoDataStack(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text"):
      raise ImportError("not installed: " + name)
sys.meta_path.insert(0, NoDataStack())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_bench_runs_without_tensorflow(tmp_path):
  """benchmarks/bench_jax_only.py times the step where TensorFlow and seqio cannot be
  imported: the model, trainer and run code load without them."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  lengths = {"hyper_inputs": 24, "inputs": 8, "targets": 6}
  argv = _argv(tmp_path, "models/tiny.gin", lengths, "--gin_file=models/hyper_lora.gin")
  argv = [a for a in argv[1:] if "input_" not in a]  # the script is bench, input untimed
  proc = subprocess.run([sys.executable, "-c", _WITHOUT_DATA_STACK,
                         "benchmarks/bench_jax_only.py", *argv],
                        cwd=repo, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((tmp_path / "bench.json").read_text())
  assert r["mode"] == "hyper" and r["batch"] == 4 and r["step_time_s"] > 0
  assert "input_s_per_batch" not in r  # the input pipeline is not timed there


def test_bench_profiles_more_steps_and_the_summary_reads_them(tmp_path, capsys):
  """bench.profile_dir: a trace of bench.profile_steps more steps, which
  benchmarks/trace_summary.py sums by kernel (here XLA's CPU ops)."""
  r = _bench(tmp_path, "models/tiny.gin", {"hyper_inputs": 24, "inputs": 8, "targets": 6},
             "--gin_file=models/hyper_lora.gin", f"--gin.bench.profile_dir='{tmp_path}/prof'",
             "--gin.bench.profile_steps=2", "--gin.bench.input_batches=0")
  assert r["profile_dir"] == f"{tmp_path}/prof"
  summary = load_script("benchmarks/trace_summary.py")
  total, calls, busy, source = summary.kernel_times(summary.newest_trace(f"{tmp_path}/prof"))
  assert source == "XLA CPU ops" and total and all(ms >= 0 for ms in total.values())
  assert 0 < sum(total.values()) <= busy + 1e-6
  assert any("fusion" in name for name in total) and set(calls.values()) >= {2}
  assert summary.main([f"{tmp_path}/prof", "--top", "3"]) == 0
  assert len([l for l in capsys.readouterr().out.splitlines() if " calls " in l]) == 3


def test_trace_summary_counts_each_kernel_once_without_what_it_encloses(tmp_path):
  """A span that encloses others (a scanned layer's `while`) counts only its own time; an
  async copy's end marker is no kernel; busy time is the union of a stream's spans."""
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  span = lambda name, ts, dur, pid=1: {"ph": "X", "pid": pid, "tid": 7, "name": name,
                                       "ts": ts, "dur": dur}
  events = meta + [span("while.3", 0, 10_000), span("fusion.1", 2_000, 3_000),
                   span("gemm", 5_000, 4_000), span("end: copy.2", 9_000, 500),
                   span("fusion.1", 20_000, 1_000), span("python", 0, 50_000, pid=2)]
  os.makedirs(tmp_path / "plugins")
  with gzip.open(tmp_path / "plugins" / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = load_script("benchmarks/trace_summary.py")
  total, calls, busy, source = summary.kernel_times(summary.newest_trace(str(tmp_path)))
  assert source == "device kernels" and busy == 11.0
  assert total == {"while.3": 3.0, "fusion.1": 4.0, "gemm": 4.0}
  assert calls == {"while.3": 1, "fusion.1": 2, "gemm": 1}
