"""Kernel time by name from a `hypert5 bench --gin.bench.profile_dir=DIR` trace: where a
step's device time goes (the first question when MFU is low).

  python benchmarks/trace_summary.py DIR [--top 30]

Reads the newest perfetto_trace.json.gz under DIR (jax.profiler writes it under
plugins/profile/<time>/). On a GPU or TPU the kernels are the events of the /device:
processes; on CPU, XLA's ops are the events of its compute threads (tf_XLAEigen*), less
the runtime's own wrappers (names with '::'). Prints the device's busy time, then the top
kernels: total ms, calls, share of the busy time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys


def newest_trace(directory: str) -> str:
  paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"{directory}: no perfetto_trace.json.gz below it; run "
                            "hypert5 bench with --gin.bench.profile_dir pointing there")
  return max(paths, key=os.path.getmtime)


def kernel_times(path: str) -> tuple[dict[str, float], dict[str, int], str]:
  """({kernel: total ms}, {kernel: calls}, where they were read) for one trace file."""
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
      names[(e.get("name"), e.get("pid"), e.get("tid") if e["name"] == "thread_name" else None)
            ] = e["args"]["name"]
  process = lambda e: names.get(("process_name", e.get("pid"), None), "")
  thread = lambda e: names.get(("thread_name", e.get("pid"), e.get("tid")), "")
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device = [e for e in spans if process(e).startswith("/device:")]
  source = "device kernels"
  if not device:  # CPU: XLA's ops run on its compute threads
    device = [e for e in spans if thread(e).startswith("tf_XLAEigen") and "::" not in e["name"]]
    source = "XLA CPU ops"
  total, calls = collections.Counter(), collections.Counter()
  for e in device:
    total[e["name"]] += e["dur"] / 1e3
    calls[e["name"]] += 1
  return dict(total), dict(calls), source


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("directory")
  p.add_argument("--top", type=int, default=30)
  args = p.parse_args(argv)
  path = newest_trace(args.directory)
  total, calls, source = kernel_times(path)
  busy = sum(total.values())
  print(f"{path}\n{source}: {busy:.1f} ms busy over the profiled steps, {len(total)} kernels")
  for name, ms in sorted(total.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"{ms:10.2f} ms {calls[name]:7d} calls {100 * ms / busy:5.1f}%  {name[:110]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
