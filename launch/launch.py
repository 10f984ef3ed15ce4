#!/usr/bin/env python3
"""Launches `hypert5` on a TPU pod, a SLURM GPU cluster, or this machine.

  launch.py tpu   --tpu=NAME --zone=ZONE [run flags]    ships the code to every TPU VM
                                                        worker, installs it, runs it there
  launch.py slurm --nodes=N --gpus_per_node=G [flags]   writes an sbatch script, submits it
  launch.py local [run flags]                           runs here

Run flags, the same for all three:
  --gin_file=FILE         repeatable, searched in gin/ like hypert5's own flag
  --model_dir=DIR         becomes --gin.MODEL_DIR='DIR'
  --gin_str NAME=VALUE    a string binding, quoted for you: --gin.NAME='VALUE'
  --gin NAME=VALUE        a binding passed as written (VALUE is a gin literal: 3, None, 'a')
  --mode=train            or eval, infer, export, bench
  --env KEY=VALUE         environment of the run (TFDS_DATA_DIR, XLA_FLAGS, ...)
  --dry_run               print the exact commands instead of running them

Pods and clusters run one process per host (TPU) or per GPU (SLURM), started with
`hypert5 --multiprocess`: jax.distributed.initialize() finds its peers from the TPU
metadata or from SLURM's environment, so nothing here configures addresses.

Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("train", "eval", "infer", "export", "bench")
SBATCH_EOF = "HYPERT5_SBATCH"


class LaunchError(Exception):
  """Bad flags: one line that says what to pass."""


# -- shell quoting -------------------------------------------------------------------


def quote(word: str) -> str:
  """Like shlex.quote, but readable for gin bindings: a word holding single quotes (gin
  strings) goes in double quotes, as in --gin.MODEL_DIR="'gs://bucket/run'"."""
  if word and re.fullmatch(r"[\w@%+=:,./-]+", word):
    return word
  if "'" not in word:
    return f"'{word}'"
  if "!" not in word:  # `!` would trigger history expansion in an interactive shell
    return '"' + re.sub(r'([\\$`"])', r"\\\1", word) + '"'
  return shlex.quote(word)


def join(argv: Sequence[str]) -> str:
  return " ".join(quote(a) for a in argv)


# -- the hypert5 command ---------------------------------------------------------------


def gin_string(value: str) -> str:
  """A gin (Python) string literal: what `--gin.NAME=` needs for a path or a name."""
  return repr(value)


def _pairs(items: Sequence[str], flag: str) -> List[tuple]:
  out = []
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
      raise LaunchError(f"{flag} {item!r}: expected NAME=VALUE")
    out.append((name, value))
  return out


def hypert5_args(args, multiprocess: bool) -> List[str]:
  """`MODE [--multiprocess] --gin_file=... --gin.NAME=VALUE ...` (without the program)."""
  if not args.gin_file:
    raise LaunchError("pass at least one --gin_file (e.g. --gin_file=experiments/synthetic_tiny.gin)")
  argv = [args.mode] + (["--multiprocess"] if multiprocess else [])
  argv += [f"--gin_file={f}" for f in args.gin_file]
  if args.model_dir:
    argv.append(f"--gin.MODEL_DIR={gin_string(args.model_dir)}")
  argv += [f"--gin.{n}={gin_string(v)}" for n, v in _pairs(args.gin_str, "--gin_str")]
  argv += [f"--gin.{n}={v}" for n, v in _pairs(args.gin, "--gin")]
  return argv


def _env_prefix(args) -> List[str]:
  return ["env"] + [f"{k}={v}" for k, v in _pairs(args.env, "--env")] if args.env else []


def _pinned_jax() -> str:
  """jax's version pinned in setup.py, so the accelerator wheel matches the CPU one."""
  with open(os.path.join(REPO, "setup.py")) as f:
    m = re.search(r'"jax==([^"]+)"', f.read())
  if not m:
    raise LaunchError("setup.py pins no jax version; pass --jax_version")
  return m.group(1)


# -- TPU pod ---------------------------------------------------------------------------


def _git_rev(ref: str, short: bool = True) -> str | None:
  cmd = ["git", "-C", REPO, "rev-parse"] + (["--short"] if short else []) + [ref]
  try:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _home(path: str, flag: str) -> str:
  """A path on the workers, relative to the home directory unless absolute; left unquoted
  so that `~` expands there, hence restricted to plain characters."""
  if not re.fullmatch(r"[\w./~-]+", path):
    raise LaunchError(f"{flag}={path!r}: use letters, digits and . _ - / only")
  return path if path.startswith(("/", "~")) else f"~/{path}"


def tpu_commands(args) -> List[List[str]]:
  """Commands run here, in order: package the code, copy it to every worker, and one ssh
  to all workers that installs it and starts hypert5 on each (same command everywhere)."""
  if not args.tpu or not args.zone:
    raise LaunchError("tpu needs --tpu=NAME and --zone=ZONE (gcloud compute tpus tpu-vm list)")
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  code, venv = _home(args.remote_dir, "--remote_dir"), _home(args.remote_venv, "--remote_venv")
  commands, remote = [], []
  if not args.skip_install:
    if args.repo_url:  # the workers clone; --ref (default: this checkout's HEAD) must be pushed
      ref = quote(args.ref or _git_rev("HEAD", short=False) or "origin/HEAD")
      remote += [f"(test -d {code}/.git || git clone --quiet {quote(args.repo_url)} {code})",
                 f"git -C {code} fetch --quiet origin",
                 f"git -C {code} checkout --quiet {ref}"]
    else:  # ship this checkout's committed tree at --ref: what runs is exactly a commit
      ref = args.ref or "HEAD"
      archive = f"/tmp/hypert5-{_git_rev(ref) or 'src'}.tar.gz"
      commands.append(["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={archive}",
                       ref])
      commands.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                       f"{args.tpu}:/tmp/hypert5.tar.gz", *where, "--worker=all"])
      remote += [f"rm -rf {code}", f"mkdir -p {code}", f"tar -xzf /tmp/hypert5.tar.gz -C {code}"]
    jax_tpu = quote(f"jax[tpu]=={args.jax_version or _pinned_jax()}")
    # Editable, so that hypert5 finds the checkout's gin/ directory.
    remote += [f"(test -x {venv}/bin/python || {quote(args.python)} -m venv {venv})",
               f"{venv}/bin/pip install --quiet --upgrade pip",
               f"{venv}/bin/pip install --quiet -e {code} {jax_tpu}"]
  run = " ".join(filter(None, [join(_env_prefix(args)), f"{venv}/bin/hypert5",
                               join(hypert5_args(args, multiprocess=True))]))
  if args.detach:
    # Outlives the ssh session: exec'd with every stream redirected, so ssh need not wait.
    log = f"~/hypert5-{args.name}.log"
    remote.append(f"{{ (cd {code} && exec nohup {run} > {log} 2>&1 < /dev/null) & }}")
    remote.append(f"echo \"hypert5 started; log: {log} on each worker\"")
  else:
    remote.append(f"cd {code} && {run}")
  commands.append(["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, *where,
                   "--worker=all", f"--command={' && '.join(remote)}"])
  return commands


# -- SLURM -----------------------------------------------------------------------------


def slurm_script(args) -> str:
  """An sbatch script: one task per GPU; `srun` starts them all on the allocated nodes."""
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise LaunchError("slurm needs --nodes >= 1 and --gpus_per_node >= 1")
  venv = args.venv or os.path.join(args.workdir, ".venv")
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={args.name}",
           f"#SBATCH --nodes={args.nodes}",
           f"#SBATCH --ntasks-per-node={args.gpus_per_node}",
           f"#SBATCH --gpus-per-node={args.gpus_per_node}",
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={os.path.join(args.log_dir, '%x-%j.out')}"]
  lines += [f"#SBATCH --partition={args.partition}"] if args.partition else []
  lines += [f"#SBATCH --account={args.account}"] if args.account else []
  lines += ["#SBATCH --exclusive"] if args.exclusive else []
  lines += [f"#SBATCH {extra}" for extra in args.sbatch]
  lines += [
      "# Generated by launch/launch.py.",
      "set -euo pipefail",
      f"cd {quote(args.workdir)}",
      *[f"export {k}={quote(v)}" for k, v in _pairs(args.env, "--env")],
      "# hypert5 --multiprocess calls jax.distributed.initialize(), which reads SLURM_NTASKS,",
      "# SLURM_PROCID, SLURM_LOCALID and SLURM_STEP_NODELIST: the first node hosts the",
      "# coordinator and each task drives GPU number SLURM_LOCALID of its node (so tasks must",
      "# see all of their node's GPUs: no per-task GPU binding).",
      join(["srun", "--kill-on-bad-exit=1", os.path.join(venv, "bin", "hypert5")]
                 + hypert5_args(args, multiprocess=True)),
  ]
  return "\n".join(lines) + "\n"


def slurm_script_path(args) -> str:
  return args.script or os.path.join(args.log_dir, f"{args.name}.sbatch")


# -- local -----------------------------------------------------------------------------


def local_command(args) -> List[str]:
  exe = os.path.join(args.venv or os.path.join(REPO, ".venv"), "bin", "hypert5")
  if not os.path.exists(exe) and not args.venv:
    exe = "hypert5"  # installed some other way: take it from PATH
  return _env_prefix(args) + [exe] + hypert5_args(args, multiprocess=False)


# -- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  run = argparse.ArgumentParser(add_help=False)
  g = run.add_argument_group("run flags")
  g.add_argument("--mode", default="train", choices=MODES)
  g.add_argument("--gin_file", action="append", default=[], help="repeatable")
  g.add_argument("--model_dir", help="MODEL_DIR (gs:// on TPU; a shared path on SLURM)")
  g.add_argument("--gin_str", action="append", default=[], metavar="NAME=VALUE",
                 help="string binding, quoted for gin")
  g.add_argument("--gin", action="append", default=[], metavar="NAME=VALUE",
                 help="binding passed as written (a gin literal)")
  g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
  g.add_argument("--name", default="hypert5", help="job name (SLURM) / log name (TPU)")
  g.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")

  p = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="target", required=True)

  tpu = sub.add_parser("tpu", parents=[run], help="a Cloud TPU VM pod slice")
  tpu.add_argument("--tpu", help="TPU VM name")
  tpu.add_argument("--zone")
  tpu.add_argument("--project", help="default: gcloud's configured project")
  tpu.add_argument("--repo_url", help="git URL the workers clone (default: ship this "
                   "checkout's --ref with gcloud scp)")
  tpu.add_argument("--ref", help="commit, branch or tag to run (default: HEAD)")
  tpu.add_argument("--remote_dir", default="hypert5", help="code directory on each worker "
                   "(relative to home)")
  tpu.add_argument("--remote_venv", default="hypert5-venv")
  tpu.add_argument("--python", default="python3", help="the workers' Python (3.10+)")
  tpu.add_argument("--jax_version", help="default: setup.py's jax pin")
  tpu.add_argument("--skip_install", action="store_true",
                   help="reuse the code and venv already on the workers")
  tpu.add_argument("--detach", action="store_true",
                   help="keep running after ssh ends; log to ~/hypert5-NAME.log on each worker")

  slurm = sub.add_parser("slurm", parents=[run], help="a SLURM GPU cluster")
  slurm.add_argument("--nodes", type=int, default=1)
  slurm.add_argument("--gpus_per_node", type=int, default=8)
  slurm.add_argument("--cpus_per_task", type=int, default=8)
  slurm.add_argument("--time", default="48:00:00")
  slurm.add_argument("--partition")
  slurm.add_argument("--account")
  slurm.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=True)
  slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                     help="another #SBATCH line, e.g. --sbatch=--qos=high")
  slurm.add_argument("--workdir", default=REPO,
                     help="the checkout, on a filesystem every node sees (default: this one)")
  slurm.add_argument("--venv", help="virtualenv on the shared filesystem (default: "
                     "WORKDIR/.venv, with the CUDA jax wheel installed)")
  slurm.add_argument("--log_dir", default=os.path.join(REPO, "out", "slurm"))
  slurm.add_argument("--script", help="where to write the sbatch script "
                     "(default: LOG_DIR/NAME.sbatch)")

  local = sub.add_parser("local", parents=[run], help="this machine")
  local.add_argument("--venv", help="default: .venv, else hypert5 from PATH")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if not re.fullmatch(r"[\w.-]+", args.name):
      raise LaunchError(f"--name={args.name!r}: use letters, digits and . _ - only")
    if args.target == "tpu":
      commands = tpu_commands(args)
      if args.repo_url is None and not args.skip_install:
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
          print(f"launch.py: note: uncommitted changes are not shipped; the workers run "
                f"{args.ref or 'HEAD'} ({_git_rev(args.ref or 'HEAD')})", file=sys.stderr)
    elif args.target == "slurm":
      script, path = slurm_script(args), slurm_script_path(args)
      dirs = list(dict.fromkeys([args.log_dir, os.path.dirname(os.path.abspath(path))]))
      if args.dry_run:  # a shell snippet that does what the real run does
        print(join(["mkdir", "-p", *dirs]))
        print(f"cat > {quote(path)} <<'{SBATCH_EOF}'\n{script}{SBATCH_EOF}")
        print(join(["sbatch", path]))
        return 0
      for d in dirs:
        os.makedirs(d, exist_ok=True)
      with open(path, "w") as f:
        f.write(script)
      commands = [["sbatch", path]]
    else:
      commands = [local_command(args)]
  except LaunchError as e:
    print(f"launch.py {args.target}: error: {e}", file=sys.stderr)
    return 2
  for command in commands:
    if args.dry_run:
      print(join(command))
    else:
      print(f"+ {join(command)}", file=sys.stderr)
      code = subprocess.run(command).returncode
      if code:
        return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
