"""One rank of the distributed meta-training tests (``tests/test_distributed.py``).

Run as ``python tests/_distributed_worker.py SCENARIO OUTDIR [INIT_FILE]`` with
``RANK`` / ``WORLD_SIZE`` set (as ``torchrun`` sets them); without ``INIT_FILE`` it
runs in one process, the reference. The process group is initialised through a
file (no network) and its collectives time out after 30 s. Each rank writes
``OUTDIR/<scenario>_rank<r>.pt``.
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import torch
from skorch.callbacks import Callback, Checkpoint

import fewmed._validation as base  # the few-shot input goes through check_images
from fewmed import DAMLClassifier, ProtoNetClassifier, ReptileInitializer
from fewmed.datasets import make_synthetic_lesions
from fewmed.distributed import init_distributed, rank, shutdown

torch.set_num_threads(1)


class RecordGrads(Callback):
    """The meta-gradient of every iteration (after the all-reduce)."""

    def initialize(self):
        self.grads = []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in named_parameters})


class FailAt(Callback):
    """Raise on this rank at an iteration (a fault)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_batch_begin(self, net, training=None, **kwargs):
        if training and net.n_iter_ == self.iteration:
            raise ValueError(f"injected fault on rank {rank()} at iteration {self.iteration}")


def data():
    return make_synthetic_lesions(n_classes=4, n_per_class=12, size=16, random_state=0)


def params(est):
    return {k: v.detach().clone() for k, v in est.module_.state_dict().items()}


def daml(n_iterations, callbacks=None, **kw):
    return DAMLClassifier(
        n_way=2,
        n_shot=2,
        n_query=3,
        n_filters=4,
        meta_batch_size=3,  # uneven over 2 ranks: 1 + 2 tasks
        n_iterations=n_iterations,
        iterations_per_epoch=2,
        verbose=0,
        random_state=0,
        callbacks=callbacks,
        **kw,
    )


def run(scenario, out):
    d = data()
    X, y = d.images, d.target
    res = {}
    if scenario in ("daml64", "daml32"):
        rec = RecordGrads()
        est = daml(4, callbacks=[rec]).fit(X, y, X_valid=X, y_valid=y)
        res = {"params": params(est), "grads": rec.grads, "history": est.history_}
        res["valid_loss"] = [e["valid_loss"] for e in est.meta_net_.history]
        if scenario == "daml64":  # resume: 2 iterations, a checkpoint, 2 more
            ckpt = os.path.join(out, f"ckpt_rank{rank()}")
            first = daml(2, callbacks=[Checkpoint(dirname=ckpt, monitor=None)], warm_start=True)
            first.fit(X, y)
            path = os.path.join(out, "daml_after2.pkl")
            if rank() == 0:
                with open(path, "wb") as f:
                    pickle.dump(first, f)
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            with open(path, "rb") as f:
                resumed = pickle.load(f)
            resumed.set_params(n_iterations=4).fit(X, y)
            res["resumed"] = params(resumed)
            res["n_iter"] = resumed.n_iter_
            res["wrote_checkpoint"] = os.path.isdir(ckpt) and bool(os.listdir(ckpt))
    elif scenario == "reptile64":
        est = ReptileInitializer(
            n_way=2,
            n_shot=3,
            n_train_shot=3,
            n_filters=4,
            meta_batch_size=4,
            n_iterations=3,
            inner_batch_size=10,  # >= the 6 images of a task: no permutation drawn
            verbose=0,
            random_state=0,
        ).fit(X, y)
        res = {"params": params(est)}
    elif scenario == "protonet":
        est = ProtoNetClassifier(
            n_way=2,
            n_shot=2,
            n_query=3,
            n_filters=4,
            meta_batch_size=4,
            n_iterations=3,
            verbose=0,
            random_state=None,
        ).fit(X, y)
        res = {"params": params(est), "history": est.history_}
    elif scenario == "fault":
        daml(4, callbacks=[FailAt(1)] if rank() == 1 else None).fit(X, y)
    torch.save(res, os.path.join(out, f"{scenario}_rank{rank()}.pt"))


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        init_distributed(
            "gloo",
            init_method="file://" + sys.argv[3],
            timeout=30,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    check = base.check_images
    for s in scenario.split(","):
        double = s.endswith("64")  # exactness: the whole run in float64
        torch.set_default_dtype(torch.float64 if double else torch.float32)
        base.check_images = (lambda X, **kw: check(X, **kw).astype(np.float64)) if double else check
        run(s, out)
    shutdown()


if __name__ == "__main__":
    main()
