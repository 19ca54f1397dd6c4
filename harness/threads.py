"""CPU threads: how many a run's pieces use (torch's intra-op pool and the BLAS/OpenMP
pools under numpy and scikit-learn)."""
from __future__ import annotations

import contextlib

import torch


def few_threads(n_rows: int, limit: int = 1000):
    """One BLAS/OpenMP thread for scikit-learn on fewer than `limit` rows (smoke-sized
    probes and t-SNE): there threads cost more in synchronisation than they save, and
    on a busy machine far more (measured on a shared 2-core box: a 240 x 512 probe took
    14.6 s of CPU with 2 threads and 0.4 s with one; a 110-point t-SNE 90 s vs 2 s).
    Larger problems keep every thread. linear_probe and embed_2d apply it themselves."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1) if n_rows < limit else contextlib.nullcontext()


@contextlib.contextmanager
def one_thread(active: bool):
    """One CPU thread for torch and the BLAS under scikit-learn while `active` (Task 2's
    smoke run: its matrices are tiny, and on a busy machine a second thread waiting for
    a core made it ~20x slower, measured); thread counts are restored afterwards."""
    if not active:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
