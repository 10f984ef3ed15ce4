"""The hypert5 program: `hypert5 {train,eval,infer,export,bench} --gin_file=... --gin.X=Y`.

One program, t5x-style: gin files choose the model (gin/models/), the run (gin/runs/) and
the experiment (gin/experiments/); `--gin.NAME=VALUE` overrides any binding. Required
values are `%gin.REQUIRED` macros (MODEL_DIR, MIXTURE, ...). The effective configuration is
written to MODEL_DIR/config.gin. gin binds typed configs here, at the edge; the library
below never imports gin.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Sequence

from hypert5.data.errors import DataError
from hypert5.training.model_io import CheckpointError
from hypert5.usage import UsageError

log = logging.getLogger("hypert5")

RUN_MODES = ("train", "eval", "infer", "export", "bench")


def _register_gin():
  import gin
  from hypert5.models import configs, gisting, hypermodel, llama
  from hypert5.training import optimizers, partitioning, trainer
  for fn in (configs.get_config, configs.T5Config, hypermodel.HyperT5Config,
             gisting.HyperLlamaConfig, optimizers.OptimizerConfig, partitioning.MeshConfig,
             trainer.TrainerConfig):
    gin.external_configurable(fn, module="hypert5")
  gin.external_configurable(llama.get_config, name="get_llama_config", module="hypert5")
  return gin


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings; errors become UsageErrors that name the problem."""
  gin = _register_gin()
  import hypert5.runs  # noqa: F401  registers the run-mode configurables
  gin.clear_config()  # a fresh configuration per run, also when called in-process
  repo_gin = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
  for path in [*search_paths, repo_gin, "."]:
    gin.add_config_file_search_path(path)
  logging.disable(logging.ERROR)  # gin logs an ERROR for every search path it misses
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                        finalize_config=False)
  except (ValueError, KeyError, IOError, SyntaxError) as e:
    raise UsageError(f"gin: {str(e).splitlines()[0]}  (check the spelling of the binding or "
                     "the file path; --gin_search_paths adds directories)") from e
  finally:
    logging.disable(logging.NOTSET)


def run(mode: str) -> Any:
  """Runs one mode with the parsed gin configuration."""
  from hypert5 import runs
  fns = {"train": runs.train, "eval": runs.evaluate, "infer": runs.infer,
         "export": runs.export, "bench": runs.bench}
  try:
    return fns[mode]()
  except RuntimeError as e:  # gin's check of gin.REQUIRED parameters
    if "Required bindings" not in str(e):
      raise
    raise UsageError(f"{str(e).splitlines()[0]}; pass --gin_file=... (e.g. "
                     "experiments/synthetic_tiny.gin) or --gin.NAME=... bindings") from e


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="hypert5", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("mode", choices=RUN_MODES)
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file (repeatable; later files override earlier ones)")
  p.add_argument("--gin_search_paths", default="",
                 help="comma-separated directories to search for gin files")
  p.add_argument("--multiprocess", action="store_true",
                 help="call jax.distributed.initialize() (TPU pods, SLURM GPU clusters)")
  p.add_argument("--log_level", default="INFO")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # --gin.NAME=VALUE flags, t5x style.
  bindings = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
  args = _parser().parse_args([a for a in argv if not a.startswith("--gin.")])
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("hypert5").setLevel(args.log_level)
  try:
    if args.multiprocess:
      import jax
      jax.distributed.initialize()
    paths = [p for p in args.gin_search_paths.split(",") if p]
    parse_gin(args.gin_file, bindings, paths)
    run(args.mode)
  except (UsageError, DataError, CheckpointError) as e:
    # gin appends "In call to configurable ..." lines; the first line is the message.
    print(f"hypert5 {args.mode}: error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
