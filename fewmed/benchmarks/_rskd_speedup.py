"""The benchmark ``rskd``'s timing of RSKD's teachers: ``n_jobs=2`` vs ``n_jobs=1``.

Part of :mod:`fewmed.benchmarks.rskd` (see its docstring): the teachers' wall time
on the first fold's shot-based subsets and on a balanced workload (4 equal
subsets), with warm loky workers, best of two runs, and its table.
"""

from __future__ import annotations

import time

import numpy as np

from fewmed.benchmarks._common import format_table
from fewmed.benchmarks._rskd_common import _estimator


def _speedup(args, prof, X, y, seed, repeats: int = 2) -> dict:
    """Teachers' wall time, n_jobs=1 vs 2: HAM shot subsets and 4 equal synthetic subsets.

    The teachers train for the profile's epochs; each timing is the best of
    ``repeats``. The two loky workers are started, and each fits a tiny teacher,
    before the timings: a session pays that once (joblib reuses its workers for
    every later fit, e.g. the other folds), so it is timed and reported apart.
    """
    from joblib import Parallel, delayed

    from fewmed import RelationalSubsetsDistiller
    from fewmed.longtail import fit_teacher

    rng = np.random.default_rng(seed)
    tiny = dict(kd=None, n_filters=4, max_epochs=1, batch_size=16, verbose=0, classes=[0, 1])
    Xt = rng.integers(0, 256, size=(32, prof["size"], prof["size"], 3), dtype=np.uint8)
    yt = np.arange(32) % 2
    t0 = time.perf_counter()
    Parallel(n_jobs=2, backend="loky")(delayed(fit_teacher)(tiny, Xt, yt) for _ in range(2))
    out = {"worker_start_seconds": time.perf_counter() - t0}
    Xb = rng.integers(0, 256, size=(4000, prof["size"], prof["size"], 3), dtype=np.uint8)
    yb = np.repeat(np.arange(8), 500)
    cases = {
        "ham_shot_subsets": (X, y, "shot"),
        "balanced_4_subsets": (Xb, yb, [[0, 1], [2, 3], [4, 5], [6, 7]]),
    }
    for name, (Xs, ys, subsets) in cases.items():
        est = _estimator(prof, seed, args, None, subsets=subsets)
        est.initialize()
        est.check_data(Xs, ys)
        Xc, targets = est.fit_cache_[1], est.fit_cache_[2]
        est.subsets_ = _subsets_of(est)
        runs = {1: [], 2: []}
        for _ in range(repeats):
            for n_jobs in (1, 2):
                est.set_params(n_jobs=n_jobs)
                t0 = time.perf_counter()
                est._fit_teachers(Xc, targets, seed)
                runs[n_jobs].append(time.perf_counter() - t0)
        times = {k: min(v) for k, v in runs.items()}
        sizes = [len(j[2]) for j in est._teacher_jobs(Xc, targets, seed)]
        out[name] = {
            "seconds_n_jobs_1": times[1],
            "seconds_n_jobs_2": times[2],
            "speedup": times[1] / times[2],
            "all_seconds": {f"n_jobs_{k}": v for k, v in runs.items()},
            "teacher_sizes": sizes,
            "epochs": prof["epochs"],
            # one thread per teacher throughout: the largest teacher bounds the time
            "static_ideal_speedup": sum(sizes) / max(max(sizes), sum(sizes) / 2),
        }
        if args.verbose:
            print(
                f"teachers {name}: n_jobs=1 {times[1]:.1f} s, n_jobs=2 {times[2]:.1f} s, "
                f"speed-up {out[name]['speedup']:.2f}x (sizes {sizes})",
                flush=True,
            )
    del RelationalSubsetsDistiller
    return out


def _subsets_of(est):
    from fewmed.longtail import build_subsets

    return build_subsets(
        est.subsets, est.classes_, est.data_info_["class_counts"], many=est.many, few=est.few
    )


def _print_speedup(speed: dict, prof: dict) -> None:
    """Print the table of :func:`_speedup`'s timings."""
    print("\nTeachers, n_jobs=2 vs n_jobs=1")
    print(
        format_table(
            [
                [
                    k,
                    f"{v['seconds_n_jobs_1']:.1f}",
                    f"{v['seconds_n_jobs_2']:.1f}",
                    f"{v['speedup']:.2f}x",
                    f"{v['static_ideal_speedup']:.2f}x",
                ]
                for k, v in speed.items()
                if isinstance(v, dict)
            ],
            ["workload", "n_jobs=1 s", "n_jobs=2 s", "speed-up", "one thread per teacher"],
        )
    )
    print(
        f"(teachers train for {prof['epochs']} epochs, best of 2 runs; starting the two "
        f"loky workers once took {speed['worker_start_seconds']:.1f} s, before the timings)"
    )
