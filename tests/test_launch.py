"""launch/launch.py's --dry_run output, run back through bash with gcloud / sbatch / srun
stubbed, so that quoting is checked by the shell that will read it; the hypert5 command
that comes out parses with hypert5's own flag and gin parsers."""
import os
import re
import subprocess

import gin
import pytest

from hypert5 import main as hypert5_main
from scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
launch = load_script("launch/launch.py")

EXPERIMENT = "experiments/mtf_sni_xl_lora.gin"
MODEL_DIR = "gs://my-bucket/runs/sni xl's"  # a space and a quote: quoting must survive
CKPT = "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_xl/checkpoint_1100000"
RUN_FLAGS = [f"--gin_file={EXPERIMENT}", f"--model_dir={MODEL_DIR}",
             f"--gin_str=DOWNSTREAM_CHECKPOINT={CKPT}", "--gin_str=SNI_DATA_DIR=/data/ni",
             "--gin=hypert5.TrainerConfig.num_steps=20000"]
PIN = re.search(r'"jax==([^"]+)"', open(os.path.join(REPO, "setup.py")).read()).group(1)


@pytest.fixture(autouse=True)
def _fresh_gin():
  yield
  gin.clear_config()


def _dry_run(capsys, *argv) -> list[str]:
  assert launch.main([*argv, "--dry_run"]) == 0
  return capsys.readouterr().out.splitlines()


def _bash_words(line: str, stubs: str = "") -> list[str]:
  """The argv bash makes of `line` (each command in `stubs` prints its arguments)."""
  fns = "".join(f'{name}() {{ printf "%s\\0" "$@"; }}; ' for name in stubs.split())
  out = subprocess.run(["bash", "-c", fns + line], check=True, capture_output=True).stdout
  return out.decode().split("\0")[:-1]


def _check_hypert5_args(argv: list[str], multiprocess: bool) -> None:
  """The launched command is one hypert5 accepts and binds as intended."""
  bindings = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
  args = hypert5_main._parser().parse_args([a for a in argv if not a.startswith("--gin.")])
  assert (args.mode, args.multiprocess, args.gin_file) == ("train", multiprocess, [EXPERIMENT])
  hypert5_main.parse_gin(args.gin_file, bindings)
  assert gin.query_parameter("%MODEL_DIR") == MODEL_DIR
  assert gin.query_parameter("%DOWNSTREAM_CHECKPOINT") == CKPT
  assert gin.query_parameter("%SNI_DATA_DIR") == "/data/ni"
  assert gin.query_parameter("hypert5.TrainerConfig.num_steps") == 20000


@pytest.mark.parametrize("word", ["plain", "a b", "it's", "--gin.X='a b'", "$HOME", 'say "hi"',
                                  "bang!'s", "`tick`'", "~/x", "back\\slash'", ""])
def test_quote_survives_bash(word):
  assert _bash_words("p " + launch.quote(word), "p") == [word]


def _check_syntax(script: str) -> None:
  subprocess.run(["bash", "-n", "-c", script], check=True)


def _remote_hypert5(remote: str) -> list[str]:
  """hypert5's arguments inside the remote script (after the venv's hypert5 program)."""
  run = remote.split("/bin/hypert5 ", 1)[1]
  run = run.split(" > ~/")[0]  # --detach: the output redirection follows
  return _bash_words("p " + run, "p")


def test_tpu_ships_the_commit_installs_and_runs_on_every_worker(capsys):
  lines = _dry_run(capsys, "tpu", "--tpu=pod-v4-64", "--zone=us-central2-b",
                   "--project=my-proj", *RUN_FLAGS)
  assert len(lines) == 3
  archive = _bash_words(lines[0], "git")
  assert archive[:2] == ["-C", REPO] and archive[2] == "archive" and archive[-1] == "HEAD"
  tarball = archive[4][len("--output="):]
  scp = _bash_words(lines[1], "gcloud")
  assert scp == ["compute", "tpus", "tpu-vm", "scp", tarball, "pod-v4-64:/tmp/hypert5.tar.gz",
                 "--zone=us-central2-b", "--project=my-proj", "--worker=all"]
  ssh = _bash_words(lines[2], "gcloud")
  assert ssh[:8] == ["compute", "tpus", "tpu-vm", "ssh", "pod-v4-64", "--zone=us-central2-b",
                     "--project=my-proj", "--worker=all"]
  assert len(ssh) == 9 and ssh[8].startswith("--command=")
  steps = ssh[8][len("--command="):].split(" && ")
  assert steps[:3] == ["rm -rf ~/hypert5", "mkdir -p ~/hypert5",
                       "tar -xzf /tmp/hypert5.tar.gz -C ~/hypert5"]
  assert f"~/hypert5-venv/bin/pip install --quiet -e ~/hypert5 'jax[tpu]=={PIN}'" in steps
  assert steps[-2] == "cd ~/hypert5" and steps[-1].startswith("~/hypert5-venv/bin/hypert5 train ")
  _check_syntax(ssh[8][len("--command="):])
  argv = _remote_hypert5(ssh[8])
  assert argv[:2] == ["train", "--multiprocess"]
  _check_hypert5_args(argv, multiprocess=True)


def test_tpu_from_a_git_url_detached(capsys):
  lines = _dry_run(capsys, "tpu", "--tpu=pod", "--zone=europe-west4-a", "--detach",
                   "--name=sni_xl", "--repo_url=https://github.com/me/hypert5.git",
                   "--ref=v0.1", "--env=TFDS_DATA_DIR=gs://my-bucket/tfds", *RUN_FLAGS)
  assert len(lines) == 1  # nothing to copy: the workers clone
  remote = _bash_words(lines[0], "gcloud")[-1][len("--command="):]
  assert remote.startswith("(test -d ~/hypert5/.git || git clone --quiet "
                           "https://github.com/me/hypert5.git ~/hypert5) && ")
  assert "git -C ~/hypert5 checkout --quiet v0.1 && " in remote
  # Only the run goes to the background, with every stream redirected; install runs first.
  assert remote.count("&") - 2 * remote.count("&&") - remote.count("2>&1") == 1
  assert re.search(r"&& \{ \(cd ~/hypert5 && exec nohup env TFDS_DATA_DIR=gs://my-bucket/tfds "
                   r"~/hypert5-venv/bin/hypert5 train .* > ~/hypert5-sni_xl.log 2>&1 "
                   r"< /dev/null\) & \} && echo ", remote)
  _check_syntax(remote)
  _check_hypert5_args(_remote_hypert5(remote), multiprocess=True)


def test_tpu_skip_install_only_runs(capsys):
  lines = _dry_run(capsys, "tpu", "--tpu=pod", "--zone=z", "--skip_install", *RUN_FLAGS)
  remote = _bash_words(lines[0], "gcloud")[-1]
  assert remote.startswith("--command=cd ~/hypert5 && ~/hypert5-venv/bin/hypert5 train ")


def test_slurm_script_runs_one_task_per_gpu_on_every_node(capsys, tmp_path):
  lines = _dry_run(capsys, "slurm", "--nodes=4", "--gpus_per_node=8", "--partition=a100",
                   "--time=72:00:00", "--name=sni_xl", f"--log_dir={tmp_path}/logs",
                   "--sbatch=--qos=high", "--env=XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", *RUN_FLAGS)
  # The printed snippet writes the script and submits it: run it with sbatch stubbed.
  submitted = _bash_words("\n".join(lines), "sbatch")
  script_path = str(tmp_path / "logs" / "sni_xl.sbatch")
  assert submitted == [script_path]
  script = open(script_path).read()
  sbatch = re.findall(r"^#SBATCH (.*)$", script, re.M)
  assert sbatch == ["--job-name=sni_xl", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8",
                    "--cpus-per-task=8", "--time=72:00:00", f"--output={tmp_path}/logs/%x-%j.out",
                    "--partition=a100", "--exclusive", "--qos=high"]
  assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9\n" in script
  # The whole script under bash, with srun stubbed: cd, exports, then one srun.
  out = subprocess.run(["bash", "-c", 'srun() { printf "%s\\0" "$@"; }; export -f srun; '
                        f"bash {script_path}"], check=True, capture_output=True).stdout
  srun = out.decode().split("\0")[:-1]
  assert srun[:2] == ["--kill-on-bad-exit=1", os.path.join(REPO, ".venv", "bin", "hypert5")]
  assert srun[2:4] == ["train", "--multiprocess"]
  _check_hypert5_args(srun[2:], multiprocess=True)


def test_local_runs_the_venv_program_without_multiprocess(capsys):
  (line,) = _dry_run(capsys, "local", *RUN_FLAGS)
  words = _bash_words("p " + line, "p")
  exe = os.path.join(REPO, ".venv", "bin", "hypert5")
  assert words[0] == (exe if os.path.exists(exe) else "hypert5")
  _check_hypert5_args(words[1:], multiprocess=False)


@pytest.mark.parametrize("argv, message", [
    (["local", "--model_dir=/tmp/x"], "at least one --gin_file"),
    (["tpu", "--zone=z", "--gin_file=f.gin"], "--tpu=NAME and --zone=ZONE"),
    (["local", "--gin_file=f.gin", "--gin_str=MODEL_DIR"], "expected NAME=VALUE"),
    (["tpu", "--tpu=t", "--zone=z", "--gin_file=f.gin", "--remote_dir=a b"], "--remote_dir"),
    (["slurm", "--gin_file=f.gin", "--nodes=0"], "--nodes >= 1"),
])
def test_bad_flags_are_one_line_errors(capsys, argv, message):
  assert launch.main([*argv, "--dry_run"]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("wrapper, target", [("tpu_pod.sh", "tpu"), ("slurm_gpu.sh", "slurm"),
                                             ("local.sh", "local")])
def test_shell_wrappers_forward_to_launch_py(capsys, wrapper, target):
  extra = ["--tpu=pod", "--zone=z", "--skip_install"] if target == "tpu" else []
  expected = _dry_run(capsys, target, *extra, *RUN_FLAGS)
  out = subprocess.run([os.path.join(REPO, "launch", wrapper), *extra, *RUN_FLAGS, "--dry_run"],
                       check=True, capture_output=True, text=True).stdout
  assert out.splitlines() == expected
