"""One process of the Accelerate test (``tests/test_accelerate.py``).

``python tests/_accelerate_worker.py OUTDIR INIT_FILE`` with ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` set as ``torchrun`` sets them: the process group meets through a
file (no network), then ``Accelerator`` finds it initialised and uses it.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator

from fewmed.accelerate import AcceleratedRelationalSubsetsDistiller
from fewmed.datasets import make_synthetic_lesions
from fewmed.distributed import init_distributed, shutdown

torch.set_num_threads(1)


def main():
    out, init = sys.argv[1], sys.argv[2]
    init_distributed(
        "gloo",
        init_method="file://" + init,
        timeout=30,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    d = make_synthetic_lesions(n_classes=3, n_per_class=16, size=16, random_state=0)
    acc = Accelerator(cpu=True)
    clf = AcceleratedRelationalSubsetsDistiller(
        accelerator=acc, device=None, n_filters=4, max_epochs=2, batch_size=8, random_state=0
    ).fit(d.images, d.target)
    res = {
        "params": {k: v.detach().clone() for k, v in clf.module_.state_dict().items()},
        "batch_sizes": [b["train_batch_size"] for e in clf.history for b in e["batches"]],
        "proba": clf.predict_proba(d.images),
        "distributed": str(acc.distributed_type),
        "num_processes": acc.num_processes,
    }
    torch.save(res, os.path.join(out, f"rank{acc.process_index}.pt"))
    shutdown()


if __name__ == "__main__":
    main()
