"""One rank of ``fewmed benchmark scaling``'s meta-training runs (started by torchrun or alone).

``python -m fewmed.benchmarks._meta_worker OUT --threads T --iterations N ...``
meta-trains DAML (the paper configuration at 28 px: Conv4, 4 tasks of 2-way
5-shot + 15 query, 5 second-order inner steps) on synthetic lesions and writes,
from rank 0, ``OUT`` (JSON): the seconds of every meta-iteration and the first
meta-gradient (after the all-reduce).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from skorch.callbacks import Callback


class _Timer(Callback):
    def initialize(self):
        self.times, self.grad = [], None
        return self

    def on_batch_begin(self, net, training=None, **kwargs):
        if training:
            self.t0 = time.perf_counter()

    def on_grad_computed(self, net, named_parameters, **kwargs):
        if self.grad is None:
            self.grad = torch.cat([p.grad.detach().reshape(-1) for _, p in named_parameters])

    def on_batch_end(self, net, training=None, **kwargs):
        if training:
            self.times.append(time.perf_counter() - self.t0)


def main(argv=None) -> None:
    from fewmed import DAMLClassifier
    from fewmed.datasets import make_synthetic_lesions
    from fewmed.distributed import init_distributed, is_main_process, shutdown

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--meta-batch", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_distributed("gloo", timeout=300)
    d = make_synthetic_lesions(n_classes=4, n_per_class=40, size=args.size, random_state=0)
    timer = _Timer()
    est = DAMLClassifier(
        n_filters=args.filters,
        n_iterations=args.iterations,
        meta_batch_size=args.meta_batch,
        callbacks=[timer],
        verbose=0,
        random_state=0,
    )
    start = time.perf_counter()
    est.fit(d.images, d.target)
    total = time.perf_counter() - start
    if is_main_process():
        with open(args.out, "w") as f:
            json.dump(
                {
                    "iteration_seconds": timer.times,
                    "fit_seconds": total,
                    "grad0": np.asarray(timer.grad, dtype=float).tolist(),
                    "torch_threads": torch.get_num_threads(),
                },
                f,
            )
    shutdown()


if __name__ == "__main__":
    main()
