"""Ordered, bounded parallel map: results come back in input order, and at most `max_inflight`
tasks exist at once, so a stream of any length is processed in bounded memory.

Two executors with one interface: a local process pool (the default) and a Dask cluster
(`engine="dask"`, see docs/data.md); the parent consumes results in order either way, which is
what makes the output independent of the executor and of the number of workers.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

__all__ = ["ordered_map", "ENGINES", "default_workers"]

ENGINES = ("local", "dask")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _local(fn, items, num_proc, max_inflight, initializer, initargs):
    if num_proc <= 1:
        if initializer:
            initializer(*initargs)
        for it in items:
            yield fn(it)
        return
    import multiprocessing as mp
    ctx = mp.get_context("fork" if os.name == "posix" and "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(num_proc, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for it in items:
            pending.append(pool.apply_async(fn, (it,)))
            del it                  # the pool holds the task until it is sent: a big one is not kept here
            if len(pending) >= max_inflight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _dask(fn, items, num_proc, max_inflight, initializer, initargs, address):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("engine='dask' needs Dask: pip install 'dask[distributed]'") from None
    if address:
        client, cluster = Client(address), None
    else:
        cluster = LocalCluster(n_workers=num_proc, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        if initializer:
            client.run(initializer, *initargs)
        pending: deque = deque()
        for it in items:
            pending.append(client.submit(fn, it, pure=False))
            if len(pending) >= max_inflight:
                f = pending.popleft()
                yield f.result()
                f.release()
        while pending:
            f = pending.popleft()
            yield f.result()
            f.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def ordered_map(fn: Callable, items: Iterable, num_proc: Optional[int] = None, max_inflight: Optional[int] = None,
                engine: str = "local", address: Optional[str] = None, initializer=None, initargs=()) -> Iterator:
    """fn(item) for each item, in order, on `num_proc` processes (local) or Dask workers.
    `address`: a running Dask scheduler (tcp://host:8786); without it a local cluster is started."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    num_proc = num_proc or default_workers()
    max_inflight = max_inflight or 2 * num_proc
    if engine == "dask":
        return _dask(fn, items, num_proc, max_inflight, initializer, initargs, address)
    return _local(fn, items, num_proc, max_inflight, initializer, initargs)
