#!/usr/bin/env python3
"""Which distributed engine runs the text stage past one machine: the same stage (same corpus,
same workers) on the local process pool, Dask (LocalCluster) and Ray (local), interleaved over
repeats, median wall time, and a check that each gives the local run's bytes.

  python scripts/bench_data_engines.py --corpus /tmp/kr_bench_data/corpus_30MB --workers 2

Engines that are not installed are reported as such (Ray is not a dependency: it is measured
from a separate environment, e.g. `python -m venv --system-site-packages /tmp/ray &&
/tmp/ray/bin/pip install 'ray[data]' && /tmp/ray/bin/python scripts/bench_data_engines.py ...`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kr_mini_llm.data import pipeline  # noqa: E402
from kr_mini_llm.data.parallel import ordered_map  # noqa: E402


def _ray_map(fn, items, num_proc=None, max_inflight=None, engine=None, address=None, initializer=None, initargs=()):
    import ray

    @ray.remote
    def task(item):
        if not getattr(task, "_ready", False):      # once per worker process
            initializer(*initargs)
            task._ready = True
        return fn(item)

    pending = deque()
    for it in items:
        pending.append(task.remote(it))
        if len(pending) >= max_inflight:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def run(engine: str, corpus: str, out: Path, workers: int, address=None) -> float:
    t = time.perf_counter()
    if engine == "ray":
        pipeline.ordered_map = _ray_map
    try:
        pipeline.prepare_text(inputs=[corpus], out_dir=out, force=True, num_proc=workers,
                              engine="dask" if engine == "dask" else "local", engine_address=address,
                              log=lambda *a: None)
    finally:
        pipeline.ordered_map = ordered_map
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="local,dask,ray")
    a = ap.parse_args()
    engines, startup, address = [], {}, None
    for e in a.engines.split(","):
        t = time.perf_counter()
        try:
            if e == "dask":       # started once, like a cluster that is already up
                from distributed import LocalCluster
                cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
                address = cluster.scheduler_address
            elif e == "ray":
                import ray
                ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
            engines.append(e)
        except ImportError:
            print(f"{e}: not installed, skipped")
            continue
        startup[e] = time.perf_counter() - t
    size = sum(f.stat().st_size for f in Path(a.corpus).rglob("*") if f.is_file()) / 1e6
    times = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for e in engines:                      # interleaved
                times[e].append(run(e, a.corpus, Path(tmp) / e, a.workers, address if e == "dask" else None))
        ref = {s: (Path(tmp) / "local" / f"{s}.txt").read_bytes() for s in ("train", "valid", "test")} \
            if "local" in engines else None
        same = {e: ref is not None and all((Path(tmp) / e / f"{s}.txt").read_bytes() == ref[s] for s in ref)
                for e in engines}
    print(f"\ncorpus {size:.0f} MB, {a.workers} workers, median of {a.repeats} (machine shared: wall times are upper bounds)\n")
    print("| engine | start-up s | median s | MB/s | runs s | output == local |\n|---|---|---|---|---|---|")
    for e in engines:
        m = statistics.median(times[e])
        print(f"| {e} | {startup[e]:.1f} | {m:.1f} | {size / m:.1f} | {', '.join(f'{x:.1f}' for x in times[e])} "
              f"| {same[e]} |")


if __name__ == "__main__":
    main()
