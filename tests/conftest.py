"""Test-wide set-up: 8 simulated CPU devices, so sharded paths run against unsharded ones;
one XLA compilation cache per test session."""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# XLA compiles dominate the suite's CPU time, and many tests compile the same programs: the
# tiny T5's init, the hypermodel inits, the CLI's train step (in this process and in the
# subprocess that test_cli kills and resumes). A persistent compilation cache private to this
# session lets every process of it (xdist workers inherit the environment, and so do
# subprocesses) compile each distinct program once. JAX keys entries by the program's HLO,
# the XLA flags and the jaxlib version, so a hit is the executable a fresh compile would
# produce; the cache starts empty and is deleted at the end, so nothing carries over between
# sessions. Set JAX_COMPILATION_CACHE_DIR to use (and keep) a directory of your own.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="hypert5-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
  # JAX's default (1 s) would skip the many sub-second compiles tests repeat.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_unconfigure(config):
  if _SESSION_CACHE is not None:  # the process that made it (xdist: the controller)
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# The files that take minutes (measured: `--durations=0`, summed per file), slowest first.
# `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: whole files, handed out in
# collection order (xdist's default reorder would put files with many tests first, and the
# two-test quick demo last); started first, these no longer leave one worker alone at the end.
SLOWEST_FILES = ("test_hypermodel.py", "test_demo.py", "test_cli.py", "test_t5.py",
                 "test_learning.py", "test_peft_friendly.py", "test_gin_files.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
