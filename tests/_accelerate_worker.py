"""One process of the Accelerate test (``tests/test_accelerate.py``).

``python tests/_accelerate_worker.py OUTDIR INIT_FILE [rskd|finetune]`` with ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` set as ``torchrun`` sets them: the process group meets
through a file (no network), then ``Accelerator`` finds it initialised and uses it.
``rskd`` (the default) fits RSKD's student; ``finetune`` runs the fine-tuning path
(``fine_tune`` / ``pretrain`` with ``accelerator=``), the first fit on the network and
data of ``OUTDIR/plain.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator

from fewmed._finetune import fine_tune, pretrain
from fewmed.accelerate import AcceleratedRelationalSubsetsDistiller
from fewmed.datasets import make_synthetic_lesions
from fewmed.distributed import init_distributed, shutdown

torch.set_num_threads(1)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def finetune(out, d, acc):
    """Three fits: full data without validation (against one process in the test),
    early stopping on a hold-out (seeded), and ``pretrain`` with ``random_state=None``."""
    module, X, y = torch.load(os.path.join(out, "plain.pt"), weights_only=False)
    plain = fine_tune(
        module, X, y, accelerator=acc, batch_size=8, lr=0.03, max_epochs=15, random_state=0
    )
    held_out = dict(accelerator=acc, n_filters=4, validation_fraction=0.25)
    stopped = fine_tune(
        "conv4",
        d.images,
        d.target,
        **held_out,
        batch_size=4,
        lr=0.05,
        max_epochs=8,
        patience=2,
        random_state=0,
    )
    backbone, history = pretrain("conv4", d.images, d.target, **held_out, max_epochs=2)
    return {
        "plain": _state(plain.module_),
        "plain_type": type(plain.module_).__name__,
        "plain_loss": list(plain.history[:, "train_loss"]),
        "plain_proba": plain.predict_proba(X),
        "plain_pred": plain.predict(X),
        "stopped": _state(stopped.module_),
        "stopped_valid_loss": list(stopped.history[:, "valid_loss"]),
        "stopped_best": dict(stopped.callbacks_)["early_stopping"].best_epoch_,
        "stopped_proba": stopped.predict_proba(d.images),
        "pretrained": _state(backbone),
        "pretrained_valid_loss": list(history[:, "valid_loss"]),
    }


def main():
    out, init = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "rskd"
    init_distributed(
        "gloo",
        init_method="file://" + init,
        timeout=30,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    d = make_synthetic_lesions(n_classes=3, n_per_class=16, size=16, random_state=0)
    acc = Accelerator(cpu=True)
    if mode == "finetune":
        res = finetune(out, d, acc)
        res["num_processes"] = acc.num_processes
        torch.save(res, os.path.join(out, f"rank{acc.process_index}.pt"))
        shutdown()
        return
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
