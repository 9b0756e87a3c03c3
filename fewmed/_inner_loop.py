"""The differentiable inner loop of MAML-style meta-learning, in one place.

Three interchangeable backends compute the same meta-gradient (tested against
each other and a float64 reference):

``"autograd"`` (:class:`~fewmed.DAMLClassifier`'s default, fastest measured on CPU)
    One task after the other: ``functional_call`` and
    ``torch.autograd.grad(create_graph=True)`` for each inner step.
``"func"``
    ``torch.func``: the inner SGD steps of one task are written with
    ``torch.func.grad`` and ``functional_call``, and the whole meta-batch is
    vectorised over tasks with ``torch.func.vmap`` (one batched convolution per
    layer instead of one per task). Gradients flow to the meta-parameters through
    ordinary autograd, second order unless ``first_order=True``.
``"higher"``
    The ``higher`` library's ``innerloop_ctx`` with a differentiable SGD, one task
    after the other: the straightforward loop most code bases use. Kept as a
    reference and fallback (``higher`` is unmaintained since 2021).

All evaluate the query set with the adapted weights and BatchNorm statistics
taken from the task's *support* set (see :class:`fewmed.nn.ReferenceBatchNorm2d`),
so predictions never depend on which other query images share the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["BACKENDS", "reference_stats", "adapt", "meta_batch_losses", "predict_logits"]

BACKENDS = ("func", "higher", "autograd")


@contextmanager
def reference_stats(model: nn.Module, n_ref: int | None, fused: bool | None = None):
    """Within the block, reference BatchNorm layers normalise with the first ``n_ref`` images.

    ``fused=False`` makes them use plain tensor operations instead of the fused
    ``batch_norm`` kernel, whose second derivative is wrong under ``vmap``
    (torch 2.13): the ``"func"`` backend needs that.
    """
    layers = [m for m in model.modules() if hasattr(m, "n_ref")]
    old = [(m.n_ref, m.fused) for m in layers]
    for m in layers:
        m.n_ref = n_ref
        if fused is not None:
            m.fused = fused
    try:
        yield
    finally:
        for m, (n, f) in zip(layers, old):
            m.n_ref, m.fused = n, f


def _sgd_steps(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int,
    first_order: bool,
) -> dict[str, torch.Tensor]:
    """Inner SGD for one task with ``torch.func.grad`` (usable under ``vmap``)."""

    def loss(p):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    for _ in range(steps):
        g = grad(loss)(params)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        params = {k: params[k] - lr * g[k] for k in params}
    return params


def _query_logits(model, params, xs, xq):
    with reference_stats(model, xs.shape[0], fused=None):
        out = functional_call(model, params, (torch.cat([xs, xq]),))
    return out[xs.shape[0] :]


def adapt(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    lr: float,
    steps: int,
    first_order: bool = False,
) -> dict[str, torch.Tensor]:
    """Adapt ``params`` to one support set with ``steps`` SGD steps of rate ``lr``."""
    with reference_stats(model, None):
        return _sgd_steps(model, params, xs, ys, lr, steps, first_order)


def predict_logits(
    model: nn.Module, params: dict[str, torch.Tensor], xs: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Logits for ``x`` with adapted ``params``, normalised with support-set statistics."""
    return _query_logits(model, params, xs, x)


def _losses_func(model, params, XS, YS, XQ, YQ, lr, steps, first_order):
    def task(xs, ys, xq, yq):
        p = _sgd_steps(model, params, xs, ys, lr, steps, first_order)
        logits = _query_logits(model, p, xs, xq)
        loss = F.cross_entropy(logits, yq)
        acc = (logits.argmax(1) == yq).float().mean()
        return loss, acc

    with reference_stats(model, None, fused=False):
        return vmap(task, randomness="error")(XS, YS, XQ, YQ)


def _losses_autograd(model, params, XS, YS, XQ, YQ, lr, steps, first_order):
    """Per-task loop with ``torch.autograd.grad(create_graph=True)``: the reference."""
    losses, accs = [], []
    for xs, ys, xq, yq in zip(XS, YS, XQ, YQ):
        p = dict(params)
        for _ in range(steps):
            with reference_stats(model, None):
                loss = F.cross_entropy(functional_call(model, p, (xs,)), ys)
            g = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
            p = {k: v - lr * gi for (k, v), gi in zip(p.items(), g)}
        logits = _query_logits(model, p, xs, xq)
        losses.append(F.cross_entropy(logits, yq))
        accs.append((logits.argmax(1) == yq).float().mean())
    return torch.stack(losses), torch.stack(accs)


def _losses_higher(model, params, XS, YS, XQ, YQ, lr, steps, first_order):
    """Per-task loop with ``higher.innerloop_ctx``, as in most MAML code bases."""
    import higher

    if first_order:
        raise ValueError(
            "first_order=True is not supported by backend='higher' (its first-order mode "
            "detaches the meta-parameters); use backend='func' or 'autograd'."
        )
    losses, accs = [], []
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for xs, ys, xq, yq in zip(XS, YS, XQ, YQ):
        with higher.innerloop_ctx(
            model, opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for _ in range(steps):
                with reference_stats(fmodel, None):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
            with reference_stats(fmodel, xs.shape[0]):
                logits = fmodel(torch.cat([xs, xq]))[xs.shape[0] :]
            losses.append(F.cross_entropy(logits, yq))
            accs.append((logits.argmax(1) == yq).float().mean())
    return torch.stack(losses), torch.stack(accs)


_IMPL: dict[str, Callable] = {
    "func": _losses_func,
    "autograd": _losses_autograd,
    "higher": _losses_higher,
}


def meta_batch_losses(
    model: nn.Module,
    XS: torch.Tensor,
    YS: torch.Tensor,
    XQ: torch.Tensor,
    YQ: torch.Tensor,
    *,
    lr: float,
    steps: int,
    first_order: bool = False,
    backend: str = "func",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query losses and accuracies of a meta-batch after inner-loop adaptation.

    Parameters
    ----------
    model : nn.Module
        The meta-learned network (its parameters are the meta-parameters).
    XS, YS : Tensor (T, n_support, C, H, W), (T, n_support)
        Support images and task-local labels of ``T`` tasks.
    XQ, YQ : Tensor (T, n_query, C, H, W), (T, n_query)
        Query images and labels.
    lr, steps : float, int
        Inner SGD learning rate and number of steps.
    first_order : bool, default=False
        Drop second-order terms (FOMAML).
    backend : {"func", "higher", "autograd"}, default="func"

    Returns
    -------
    losses, accuracies : Tensor (T,), Tensor (T,)
        ``losses`` is differentiable with respect to ``model``'s parameters.
    """
    if backend not in _IMPL:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    params = dict(model.named_parameters())  # "higher" patches the model itself
    return _IMPL[backend](model, params, XS, YS, XQ, YQ, lr, steps, first_order)
