"""Long runs with flat memory: thousands of scoring episodes per few-shot estimator.

Each estimator is fitted once (small settings, synthetic lesions) and then scores
``--episodes`` episodes (5,000 by default) in chunks through ``episode_scores``,
the path ``score``, ``GridSearchCV`` and the benchmarks use; the process's resident
memory (RSS) is read after every chunk. The growth after the first chunk (the
warm-up: allocator pools, lazily built kernels) must stay under ``--limit-mb``
(50 MB). The seconds per episode are printed as a ratio to ProtoNet's (the first
estimator's when ProtoNet is not run), measured in the same run. Writes
``memory.json`` and ``memory.png`` under ``--out``.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

from fewmed.benchmarks._common import environment, format_table, output_dir, write_json


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="1,000 episodes per estimator")
    parser.add_argument("--episodes", type=int, default=None, help="default 5,000")
    parser.add_argument("--chunk", type=int, default=250, help="episodes between RSS reads")
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=None,
        help="a subset of ProtoNet, DAML, Reptile, FineTune, Features+KNN (default: all)",
    )
    parser.add_argument("--limit-mb", type=float, default=50.0)
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--out", default="fewmed_results/memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", type=int, default=1)


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux ``/proc``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def estimators(seed: int) -> dict:
    """The few-shot estimators, small enough for thousands of episodes on a CPU."""
    from fewmed import (
        ConvFeatureExtractor,
        DAMLClassifier,
        FeatureFewShotClassifier,
        FineTuneClassifier,
        ProtoNetClassifier,
        ReptileInitializer,
    )

    task = {"n_way": 2, "n_shot": 5, "n_query": 5, "random_state": seed}
    meta = {**task, "n_filters": 8, "meta_batch_size": 2, "n_iterations": 20, "verbose": 0}
    return {
        "ProtoNet": ProtoNetClassifier(**meta, augment=False),
        "DAML": DAMLClassifier(**meta, n_inner_steps=1, n_adapt_steps=3, augment=False),
        "Reptile": ReptileInitializer(**meta, n_inner_steps=2, n_adapt_steps=3),
        "FineTune": FineTuneClassifier(**task, n_filters=8, max_epochs=1, n_adapt_steps=3),
        "Features+KNN": FeatureFewShotClassifier(
            ConvFeatureExtractor(n_filters=8, max_epochs=1, random_state=seed), **task
        ),
    }


def measure(est, X, y, n_episodes: int, chunk: int, *, seed: int = 0) -> dict:
    """Score ``n_episodes`` episodes of ``(X, y)`` in chunks; RSS after each chunk.

    Returns the RSS trace, the growth after the first chunk (MB), the seconds per
    episode and the mean AUC.
    """
    trace, aucs = [], []
    gc.collect()
    start = time.perf_counter()
    done = 0
    while done < n_episodes:
        k = min(chunk, n_episodes - done)
        aucs.append(est.episode_scores(X, y, n_tasks=k, random_state=seed + done))
        done += k
        gc.collect()
        trace.append((done, rss_mb()))
    seconds = time.perf_counter() - start
    rss = np.array([r for _, r in trace])
    return {
        "episodes": [d for d, _ in trace],
        "rss_mb": rss.tolist(),
        "growth_mb": float(rss[-1] - rss[0]),
        "peak_growth_mb": float(rss.max() - rss[0]),
        "seconds_per_episode": seconds / n_episodes,
        "mean_auc": float(np.mean(np.concatenate(aucs))),
    }


def run(args) -> dict:
    import torch

    from fewmed.datasets import make_synthetic_lesions

    n_episodes = args.episodes or (1000 if args.quick else 5000)
    data = make_synthetic_lesions(
        n_classes=6, n_per_class=40, size=args.size, random_state=args.seed
    )
    X, y = data.images, data.target
    common = y < 3
    results = {}
    chosen = estimators(args.seed)
    unknown = set(args.estimators or ()) - set(chosen)
    if unknown:
        raise ValueError(f"unknown --estimators {sorted(unknown)}; choose from {list(chosen)}")
    for name, est in chosen.items():
        if args.estimators and name not in args.estimators:
            continue
        est.fit(X[common], y[common])
        res = measure(est, X[~common], y[~common], n_episodes, args.chunk, seed=args.seed)
        results[name] = res
        if args.verbose:
            print(
                f"{name:>13}: {n_episodes} episodes, RSS {res['rss_mb'][0]:.0f} -> "
                f"{res['rss_mb'][-1]:.0f} MB (growth {res['growth_mb']:+.1f} MB), "
                f"{1000 * res['seconds_per_episode']:.1f} ms/episode",
                flush=True,
            )
    base = results.get("ProtoNet", next(iter(results.values())))["seconds_per_episode"]
    rows = [
        [
            name,
            n_episodes,
            f"{r['growth_mb']:+.1f}",
            f"{r['peak_growth_mb']:+.1f}",
            "yes" if r["growth_mb"] < args.limit_mb else "NO",
            f"{1000 * r['seconds_per_episode']:.1f}",
            f"{r['seconds_per_episode'] / base:.2f}x",
            f"{r['mean_auc']:.3f}",
        ]
        for name, r in results.items()
    ]
    header = [
        "estimator",
        "episodes",
        "RSS growth MB",
        "peak growth MB",
        f"< {args.limit_mb:g} MB",
        "ms/episode",
        "vs ProtoNet",
        "mean AUC",
    ]
    print(format_table(rows, header))
    out = output_dir(args.out)
    payload = {
        "benchmark": "memory",
        "episodes": n_episodes,
        "chunk": args.chunk,
        "limit_mb": args.limit_mb,
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "flat": all(r["growth_mb"] < args.limit_mb for r in results.values()),
        "environment": environment(),
    }
    write_json(out / "memory.json", payload)
    _plot(results, out / "memory.png", args.limit_mb)
    return payload


def _plot(results: dict, path, limit_mb: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, r in results.items():
        rss = np.asarray(r["rss_mb"])
        ax.plot(r["episodes"], rss - rss[0], label=name)
    ax.axhline(limit_mb, color="k", ls="--", lw=0.8, label=f"{limit_mb:g} MB limit")
    ax.set_xlabel("scoring episodes")
    ax.set_ylabel("RSS growth after the first chunk (MB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
