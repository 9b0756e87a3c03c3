"""What the RSKD benchmark's parts share: the shot thresholds, the estimator of a
method, and the mAP of each frequency group (``fewmed benchmark rskd``)."""

from __future__ import annotations

import numpy as np

#: Shot-based groups: "many" above 20% of the training samples, "few" below 4%.
MANY, FEW = 0.2, 0.04


def _estimator(prof: dict, seed: int, args, memory, **params):
    from fewmed import RelationalSubsetsDistiller

    base = dict(
        module=prof["module"],
        n_filters=prof["n_filters"],
        max_epochs=prof["epochs"],
        batch_size=prof["batch_size"],
        lr=prof["lr"],
        lr_schedule=prof["lr_schedule"],
        teacher_max_steps=prof["teacher_max_steps"],
        teacher_patience=prof["teacher_patience"],
        many=MANY,
        few=FEW,
        delta=args.delta,
        n_jobs=args.n_jobs,
        memory=memory,
        random_state=seed,
        device=args.device,
        augment=not args.quick,
    )
    base.update(params)
    return RelationalSubsetsDistiller(**base)


def _group_map(y_true, proba, groups: dict) -> dict:
    from fewmed.metrics import per_class_average_precision

    ap = per_class_average_precision(y_true, proba)
    out = {g: float(np.nanmean(ap[idx])) for g, idx in groups.items()}
    out["total"] = float(np.nanmean(ap))
    out["ap_per_class"] = ap.tolist()
    return out
