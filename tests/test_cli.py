"""The `hypert5` program end to end on the synthetic family with a tiny HyperT5-LoRA:
exact resume after SIGKILL, sharded == single-device, eval, export, infer, and errors."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import hypert5
from hypert5 import main, runs
from hypert5.training import peft_io
from hypert5.usage import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, CKPT = 16, 4
BASE_ARGS = ["--gin_file=experiments/synthetic_tiny.gin",
             f"--gin.hypert5.TrainerConfig.num_steps={STEPS}",
             f"--gin.hypert5.TrainerConfig.checkpoint_every={CKPT}",
             "--gin.hypert5.TrainerConfig.log_every=1",
             "--gin.hypert5.TrainerConfig.async_checkpoints=False",
             "--gin.hypert5.get_config.dropout_rate=0.1",  # resume must restore the PRNG too
             "--gin.experiment.batch_size=8"]
ONE_DEVICE = ["--gin.hypert5.MeshConfig.data=1"]


def _train(model_dir, *extra):
  assert main.main(["train", f"--gin.MODEL_DIR='{model_dir}'", *BASE_ARGS, *extra]) == 0


def _losses(model_dir):
  """Per-step losses; a step logged twice (re-run after a resume) keeps its last value."""
  out = {}
  with open(os.path.join(model_dir, "train_log.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row["loss"]
  return [out[s] for s in sorted(out)]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("baseline"))
  _train(model_dir, *ONE_DEVICE)
  return model_dir


def test_training_writes_config_logs_and_checkpoints(baseline):
  assert os.path.exists(os.path.join(baseline, "config.gin"))
  assert "experiment.mixture = %MIXTURE" in open(os.path.join(baseline, "config.gin")).read()
  assert json.load(open(os.path.join(baseline, "downstream.json")))["mode"] == "hyper"
  losses = _losses(baseline)
  assert len(losses) == STEPS and np.mean(losses[-5:]) < np.mean(losses[:5])
  assert sorted(os.listdir(os.path.join(baseline, "checkpoints")), key=int) == ["8", "12", "16"]


def test_resume_after_sigkill_gives_identical_losses(baseline, tmp_path):
  model_dir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "hypert5.main", "train", f"--gin.MODEL_DIR='{model_dir}'",
         *BASE_ARGS, *ONE_DEVICE]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_ckpt = os.path.join(model_dir, "checkpoints", str(CKPT))
  deadline = time.time() + 300
  while not os.path.exists(first_ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  killed_at = len(_losses(model_dir))
  assert CKPT <= killed_at < STEPS
  _train(model_dir, *ONE_DEVICE)  # resumes from the last complete checkpoint
  np.testing.assert_array_equal(_losses(model_dir), _losses(baseline))


def test_sharded_cli_run_matches_single_device(baseline, tmp_path):
  assert jax.device_count() == 8
  model_dir = str(tmp_path / "mesh222")
  _train(model_dir, "--gin.hypert5.MeshConfig.data=2", "--gin.hypert5.MeshConfig.fsdp=2",
         "--gin.hypert5.MeshConfig.model=2", f"--gin.hypert5.TrainerConfig.num_steps={CKPT}")
  # The first steps agree to float32 rounding (reductions run in another order on 8
  # devices); later steps drift apart as Adam amplifies those last-bit differences.
  np.testing.assert_allclose(_losses(model_dir), _losses(baseline)[:CKPT], atol=1e-4)


def _examples(tmp_path):
  from tasks import synthetic
  member = synthetic.FAMILY.heldout_members[0]
  support = synthetic.FAMILY.support(member)
  queries = synthetic.FAMILY.queries(member, "test")[:5]
  ex = tmp_path / "examples.jsonl"
  ex.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in support))
  q = tmp_path / "queries.jsonl"
  q.write_text("".join(json.dumps({"input": i}) + "\n" for i, _ in queries))
  return str(ex), str(q), queries


def test_eval_writes_per_task_metrics(baseline):
  assert main.main(["eval", f"--gin.MODEL_DIR='{baseline}'", *BASE_ARGS, *ONE_DEVICE,
                    "--gin.EVAL_MIXTURE='synthetic_heldout_000'",
                    "--gin_file=runs/eval.gin"]) == 0
  metrics = json.load(open(os.path.join(baseline, "eval", f"metrics_{STEPS}.json")))
  assert set(metrics) == {"synthetic_heldout_000", "mean"}
  task = metrics["synthetic_heldout_000"]
  assert 0.0 <= task["exact_match"] <= 100.0 and "rougeL" in " ".join(task) or task


def test_restore_reads_the_checkpoint_without_initialising(baseline, monkeypatch):
  """eval / export / infer restore into the mode's abstract shapes: the same state a
  template of initialised arrays restores, with no hypermodel initialised to be overwritten."""
  from hypert5 import runs
  from hypert5.models import hypermodel
  from hypert5.training import checkpoints, train_step
  main.parse_gin(["experiments/synthetic_tiny.gin"],
                 [a[len("--gin."):] for a in BASE_ARGS + ONE_DEVICE if a.startswith("--gin.")]
                 + [f"MODEL_DIR='{baseline}'"])
  exp = runs.experiment()
  trainable, frozen = exp.objective.init(jax.random.key(0), runs.load_downstream(exp))
  ckpt = checkpoints.Checkpointer(baseline, async_save=False)
  want, _ = ckpt.restore(train_step.create_train_state(runs.optimizer(exp), trainable,
                                                       jax.random.key(0)))
  ckpt.close()

  def no_init(*args, **kwargs):
    raise AssertionError("restore initialised the hypermodel")
  monkeypatch.setattr(hypermodel, "init_hyper_params", no_init)
  params, restored_frozen, step = runs.restore_trainable(exp)
  assert step == STEPS
  jax.tree.map(np.testing.assert_array_equal, params, want.params)
  jax.tree.map(np.testing.assert_array_equal, restored_frozen, frozen)


def test_export_round_trips_and_infer_writes_outputs(baseline, tmp_path):
  examples, queries, rows = _examples(tmp_path)
  out = tmp_path / "export"
  assert main.main(["export", f"--gin.MODEL_DIR='{baseline}'", *BASE_ARGS, *ONE_DEVICE,
                    "--gin_file=runs/export.gin", f"--gin.EXAMPLES_FILE='{examples}'",
                    f"--gin.EXPORT_DIR='{out}'"]) == 0
  lora = peft_io.load_peft_safetensors(str(out / "peft.safetensors"))
  again = peft_io.load_peft_orbax(str(out / "orbax"))
  jax.tree.map(np.testing.assert_array_equal, again, lora)
  config = hypert5.get_config("tiny")
  adapter = hypert5.load_peft_adapter(out / "peft_adapter", config)
  jax.tree.map(np.testing.assert_allclose, adapter.a, lora.a)
  # The merged checkpoint computes what the frozen model + adapter computes.
  merged_cfg, merged = hypert5.load_t5(out / "merged_hf")
  from hypert5.runs import experiment  # noqa: F401  (gin is still configured from export)
  enc = np.array([[70, 71, 72, 1, 0]], np.int32)
  dec = np.array([[0, 73, 74]], np.int32)
  ref_cfg = merged_cfg
  base = jax.device_get(_downstream())
  want = hypert5.T5(ref_cfg).apply({"params": base}, enc, dec, adapter)
  got = hypert5.T5(ref_cfg).apply({"params": merged}, enc, dec)
  np.testing.assert_allclose(got, want, atol=1e-4)

  output = tmp_path / "out.jsonl"
  assert main.main(["infer", f"--gin.MODEL_DIR='{baseline}'", *BASE_ARGS, *ONE_DEVICE,
                    "--gin_file=runs/infer.gin", f"--gin.EXAMPLES_FILE='{examples}'",
                    f"--gin.QUERIES_FILE='{queries}'", f"--gin.OUTPUT_FILE='{output}'"]) == 0
  written = [json.loads(l) for l in output.read_text().splitlines()]
  assert [w["input"] for w in written] == [i for i, _ in rows]
  assert all(isinstance(w["output"], str) for w in written)

  # LoRA tuning from the export (hyper-init) starts from it exactly; a LoRA of another rank
  # or alpha is a one-line error that names the difference, before anything is built.
  for rank, alpha, differs in ((lora.rank, lora.alpha, None),
                               (lora.rank // 2, lora.alpha, "['q']"),
                               (lora.rank, 2 * lora.alpha, "'alpha'")):
    main.parse_gin(["experiments/synthetic_tiny.gin", "runs/peft_tune.gin"], [
        f"MODEL_DIR='{tmp_path / 'tune'}'", "MIXTURE='synthetic_plain_heldout_000'",
        "PEFT_MODE='lora'", f"INITIAL_PEFT='{out / 'peft.safetensors'}'",
        f"hypert5.HyperT5Config.lora_rank={rank}", f"hypert5.HyperT5Config.lora_alpha={alpha}"])
    exp = runs.experiment()
    assert exp.objective.mode == "lora"
    if differs:
      with pytest.raises(UsageError, match="peft.safetensors: a LoRA that differs") as e:
        runs.initial_peft(exp)
      assert differs in str(e.value) and "lora_rank / lora_alpha" in str(e.value)
      continue
    trainable, _ = exp.objective.init(jax.random.key(0), {}, runs.initial_peft(exp))
    jax.tree.map(np.testing.assert_array_equal, trainable, lora)
  main.parse_gin(["experiments/synthetic_tiny.gin", "runs/peft_tune.gin"], [
      f"MODEL_DIR='{tmp_path / 'tune'}'", "MIXTURE='synthetic_plain_heldout_000'",
      "PEFT_MODE='prefix'", f"INITIAL_PEFT='{out / 'peft.safetensors'}'"])
  with pytest.raises(UsageError, match="holds a LoRA, but mode 'prefix' tunes a Prefix"):
    runs.initial_peft(runs.experiment())


def _downstream():
  """The run's random downstream (no checkpoint): same seed, same init as training."""
  from hypert5.models import t5
  return t5.init_params(hypert5.get_config("tiny", dropout_rate=0.1), jax.random.key(0))


@pytest.mark.parametrize("args, message", [
    ([], "MODEL_DIR is required"),
    (["--gin.MODEL_DIR='/tmp/x'", "--gin.MIXTURE='no_such_mixture'"],
     "unknown task or mixture 'no_such_mixture'"),
    (["--gin.MODEL_DIR='/tmp/x'", "--gin.hypert5.TrainerConfig.num_stepz=3"], "gin: "),
])
def test_bad_input_is_a_one_line_error(args, message, capsys):
  assert main.main(["train", "--gin_file=experiments/synthetic_tiny.gin", *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_checkpoint_from_a_different_model_is_a_one_line_error(baseline, capsys):
  code = main.main(["eval", f"--gin.MODEL_DIR='{baseline}'", *BASE_ARGS, *ONE_DEVICE,
                    "--gin.EVAL_MIXTURE='synthetic_heldout_000'", "--gin_file=runs/eval.gin",
                    "--gin.hypert5.HyperT5Config.lora_rank=4"])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "does not match the configured model" in err[0], err
