"""Independent jobs side by side: one after the other in this process, or N at a time in
spawned processes, each with its share of the cores as torch (and frozen-tower) threads. Small
models train and drive faster as two 1-thread jobs than as one 2-thread job on a 2-core CPU. Used
by the ablation's runs and the study's closed-loop policies."""
from __future__ import annotations

import os


def _with_threads(threads: int, fn, args):
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def run_side_by_side(fn, calls: list, jobs: int = 1, desc: str = 'jobs',
                     progress: bool = True) -> list:
    """``[fn(*args) for args in calls]``, in call order. ``jobs`` <= 1: here, one after the
    other; else ``jobs`` at a time in spawned processes (``fn`` must be a module-level
    function), with a progress bar over finished jobs. A job's exception is raised here."""
    if jobs <= 1:
        return [fn(*args) for args in calls]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = {pool.submit(_with_threads, threads, fn, args): i
                   for i, args in enumerate(calls)}
        results = [None] * len(calls)
        for future in tqdm(as_completed(futures), total=len(futures), unit='job',
                           desc=f'{desc} ({jobs} at a time)', disable=not progress):
            results[futures[future]] = future.result()
    return results
