"""Kernel time by name from a `hypert5 bench --gin.bench.profile_dir=DIR` trace: where a
step's device time goes (the first question when MFU is low).

  python benchmarks/trace_summary.py DIR [--top 30]

Reads the newest perfetto_trace.json.gz under DIR (jax.profiler writes it under
plugins/profile/<time>/). On a GPU the kernels are the events of the /device: processes'
streams (on a TPU, their "XLA Ops" rows); on CPU, XLA's ops are the events of its compute
and client threads, less the runtime's own wrappers (names with '::'). Each kernel counts
its own time, less the spans nested in it. Prints the busy time, then the top kernels:
ms, calls, share of the busy time.
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


def kernel_times(path: str) -> tuple[dict[str, float], dict[str, int], float, str]:
  """({kernel: self ms}, {kernel: calls}, busy ms, where they were read) for one trace.
  A kernel's time is its own, less the spans nested in it (a scanned layer's `while`
  holds its body's ops); busy is the union of the spans, summed over threads and streams
  (so it can exceed the wall time where several run at once)."""
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
  spans = [e for e in events if e.get("ph") == "X" and e.get("dur")
           and not e["name"].startswith("end: ")]  # async copies' end markers
  device = [e for e in spans if process(e).startswith("/device:")]
  if any(thread(e) == "XLA Ops" for e in device):  # TPU: also module and step rows
    device = [e for e in device if thread(e) == "XLA Ops"]
  source = "device kernels"
  if not device:  # CPU: XLA's ops run on its compute threads and on the client's
    device = [e for e in spans if thread(e).startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient"))
              and "::" not in e["name"]]
    source = "XLA CPU ops"
  by_thread = collections.defaultdict(list)
  for e in device:
    by_thread[(e["pid"], e["tid"])].append(e)
  total, calls, busy = collections.Counter(), collections.Counter(), 0.0
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    open_spans = []  # [end, event, time of its children]
    def close(until):
      nonlocal busy
      while open_spans and open_spans[-1][0] <= until:
        end, e, children = open_spans.pop()
        total[e["name"]] += (e["dur"] - children) / 1e3
        calls[e["name"]] += 1
        if open_spans:
          open_spans[-1][2] += e["dur"]
        else:
          busy += e["dur"] / 1e3
    for e in evs:
      close(e["ts"])
      open_spans.append([e["ts"] + e["dur"], e, 0.0])
    close(float("inf"))
  return dict(total), dict(calls), busy, source


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("directory")
  p.add_argument("--top", type=int, default=30)
  args = p.parse_args(argv)
  path = newest_trace(args.directory)
  total, calls, busy, source = kernel_times(path)
  print(f"{path}\n{source}: {busy:.1f} ms busy over the profiled steps (summed over threads "
        f"and streams), {len(total)} kernels")
  for name, ms in sorted(total.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"{ms:10.2f} ms {calls[name]:7d} calls {100 * ms / max(busy, 1e-9):5.1f}%  {name[:110]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
