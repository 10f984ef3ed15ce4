"""`hypert5 bench` on an image with JAX but not the data stack (TensorFlow, seqio): the
model timing needs neither. Used on lent GPU machines, whose image carries JAX, Flax,
Optax and Orbax but no TensorFlow. Same arguments as `hypert5 bench`, e.g.

  python benchmarks/bench_jax_only.py --gin_file=models/large.gin \
      --gin_file=models/hyper_lora.gin --gin_file=runs/bench.gin \
      --gin.hypert5.get_config.dtype="'bfloat16'"

The step is timed on random tokens exactly as `hypert5 bench` times it; the input pipeline
is not timed (bench.input_batches=0). Without the data stack MIXTURE cannot be looked up,
so the batch has one query per row.
"""
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hypert5 import main  # noqa: E402


def run(argv: list[str]) -> int:
  try:
    import seqio  # noqa: F401
  except ImportError:
    # runs/base.gin's `import tasks` registers the tasks through seqio; without it an
    # empty module stands in, and bench's lookup of MIXTURE counts one query per row.
    sys.modules["tasks"] = types.ModuleType("tasks")
  return main.main(["bench", *argv, "--gin.bench.input_batches=0"])


if __name__ == "__main__":
  sys.exit(run(sys.argv[1:]))
