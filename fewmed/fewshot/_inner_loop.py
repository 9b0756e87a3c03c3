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
``"threads"`` (CPU, opt-in)
    The ``"autograd"`` loop with the tasks spread over Python threads, one torch
    thread each (as many threads as torch had, at most one per task), each with
    its own copy of the module. A custom autograd function runs the tasks'
    forward passes in parallel, and, when the meta-loss is back-propagated, each
    task's backward with its weight ``dL_meta / dL_i``, summed in task order.
    Deterministic; equal to the ``"autograd"`` loop run on one torch thread (with
    second-order terms, two-thread convolution kernels sum in another order and
    move the meta-gradient by a few 1e-3 in the paper configuration).

All evaluate the query set with the adapted weights and BatchNorm statistics
taken from the task's *support* set (see :class:`fewmed.nn.ReferenceBatchNorm2d`),
so predictions never depend on which other query images share the batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["BACKENDS", "reference_stats", "adapt", "meta_batch_losses", "predict_logits"]

BACKENDS = ("func", "higher", "autograd", "threads")


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


def _autograd_task(model, params, xs, ys, xq, yq, lr, steps, first_order):
    """One task's query loss and accuracy after ``steps`` inner SGD steps (autograd)."""
    p = dict(params)
    for _ in range(steps):
        with reference_stats(model, None):
            loss = F.cross_entropy(functional_call(model, p, (xs,)), ys)
        g = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
        p = {k: v - lr * gi for (k, v), gi in zip(p.items(), g)}
    logits = _query_logits(model, p, xs, xq)
    return F.cross_entropy(logits, yq), (logits.argmax(1) == yq).float().mean()


def _losses_autograd(model, params, XS, YS, XQ, YQ, lr, steps, first_order):
    """Per-task loop with ``torch.autograd.grad(create_graph=True)``: the reference."""
    out = [
        _autograd_task(model, params, *task, lr, steps, first_order) for task in zip(XS, YS, XQ, YQ)
    ]
    return torch.stack([loss for loss, _ in out]), torch.stack([acc for _, acc in out])


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


class _ParallelTasks(torch.autograd.Function):
    """Query losses of T tasks computed in threads; backward runs per task, in threads."""

    @staticmethod
    def forward(ctx, run, *values):
        graphs = run.forward(values)
        ctx.run, ctx.graphs = run, graphs
        losses = torch.stack([loss.detach() for loss, _ in graphs])
        accs = torch.stack([acc for _, acc in graphs])
        ctx.mark_non_differentiable(accs)
        return losses, accs

    @staticmethod
    def backward(ctx, grad_losses, _grad_accs):
        grads = ctx.run.backward(ctx.graphs, grad_losses)
        ctx.graphs = None
        return (None, *grads)


class _TaskThreads:
    """The work of :class:`_ParallelTasks`: one thread per task at a time, one torch thread."""

    _pool: ThreadPoolExecutor | None = None
    _pool_size = 0

    def __init__(self, model, names, XS, YS, XQ, YQ, lr, steps, first_order):
        self.model, self.names = model, names
        self.tasks = list(zip(XS, YS, XQ, YQ))
        self.lr, self.steps, self.first_order = lr, steps, first_order
        self.n_threads = max(1, min(torch.get_num_threads(), len(self.tasks)))

    @classmethod
    def pool(cls, n_threads: int) -> ThreadPoolExecutor:
        if cls._pool is None or cls._pool_size < n_threads:
            cls._pool, cls._pool_size = ThreadPoolExecutor(n_threads, "fewmed-task"), n_threads
        return cls._pool

    def _map(self, fn, items):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if self.n_threads == 1:
                return [fn(i) for i in items]
            chunks = [items[j :: self.n_threads] for j in range(self.n_threads)]

            def work(chunk):
                torch.set_num_threads(1)
                return [(i, fn(i)) for i in chunk]

            parts = self.pool(self.n_threads).map(work, chunks)
            done = dict(pair for part in parts for pair in part)
            return [done[i] for i in items]
        finally:
            torch.set_num_threads(previous)

    def forward(self, values):
        leaves = [v.detach().requires_grad_(v.requires_grad) for v in values]
        self.leaves = leaves

        def task(i):
            model = copy.deepcopy(self.model)  # functional_call must not share a module
            params = dict(zip(self.names, leaves))
            with torch.enable_grad():
                loss, acc = _autograd_task(
                    model, params, *self.tasks[i], self.lr, self.steps, self.first_order
                )
            return loss, acc.detach()

        return self._map(task, list(range(len(self.tasks))))

    def backward(self, graphs, grad_losses):
        wanted = [v for v in self.leaves if v.requires_grad]

        def task(i):
            return torch.autograd.grad(
                graphs[i][0], wanted, grad_outputs=grad_losses[i], allow_unused=True
            )

        per_task = self._map(task, list(range(len(graphs))))
        grads, k = [], 0
        for v in self.leaves:
            if not v.requires_grad:
                grads.append(None)
                continue
            parts = [g[k] for g in per_task if g[k] is not None]
            grads.append(sum(parts[1:], parts[0]) if parts else torch.zeros_like(v))
            k += 1
        return grads


def _losses_threads(model, params, XS, YS, XQ, YQ, lr, steps, first_order):
    """The ``"autograd"`` loop, tasks in parallel threads (see the module docstring)."""
    run = _TaskThreads(model, list(params), XS, YS, XQ, YQ, lr, steps, first_order)
    return _ParallelTasks.apply(run, *params.values())


_IMPL: dict[str, Callable] = {
    "func": _losses_func,
    "autograd": _losses_autograd,
    "higher": _losses_higher,
    "threads": _losses_threads,
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
    backend : {"func", "higher", "autograd", "threads"}, default="func"

    Returns
    -------
    losses, accuracies : Tensor (T,), Tensor (T,)
        ``losses`` is differentiable with respect to ``model``'s parameters.

    Examples
    --------
    >>> import torch
    >>> from fewmed.nn import Conv4
    >>> _ = torch.manual_seed(0)
    >>> model = Conv4(n_classes=2, n_filters=4, norm="reference")  # no running stats
    >>> XS, YS = torch.randn(3, 4, 3, 28, 28), torch.tensor([[0, 0, 1, 1]] * 3)
    >>> losses, accs = meta_batch_losses(model, XS, YS, XS, YS, lr=0.1, steps=1)
    >>> losses.shape, losses.requires_grad
    (torch.Size([3]), True)
    """
    if backend not in _IMPL:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    params = dict(model.named_parameters())  # "higher" patches the model itself
    return _IMPL[backend](model, params, XS, YS, XQ, YQ, lr, steps, first_order)
