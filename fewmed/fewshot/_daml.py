"""Difficulty-aware meta-learning (DAML) for rare-disease diagnosis.

Li, Yu, Zhou, Heng. *Difficulty-aware Meta-Learning for Rare Disease Diagnosis*,
MICCAI 2020. MAML on binary k-shot tasks from common diseases; after a warm-up of
plain MAML the meta-loss re-weights tasks by difficulty (Eq. 3)::

    L_DA = sum_i -L_i**eta * log(max(eps, 1 - L_i))

read with the log continued by its tangent beyond ``1 - eps`` so that a task's
weight grows with its loss (:func:`difficulty_aware_loss`).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from fewmed.fewshot._base import META_CONSTRAINTS, BaseMetaLearner, MetaNetAttributes
from fewmed.fewshot._inner_loop import BACKENDS, adapt, meta_batch_losses, predict_logits
from fewmed.fewshot._meta_net import IterationSchedule, MetaNet, step_decay

__all__ = ["DAMLClassifier", "DAMLNet", "difficulty_aware_loss"]


def difficulty_aware_loss(task_losses: torch.Tensor, eta: float, eps: float = 0.1) -> torch.Tensor:
    """The difficulty-aware meta-loss of DAML (Eq. 3), summed over tasks.

    ``sum_i L_i**eta * g(L_i)`` with ``g(L) = -log(1 - L)`` for ``L <= 1 - eps``
    and, beyond, the tangent of that log at ``1 - eps``:
    ``g(L) = -log(eps) + (L - 1 + eps) / eps``. Easy tasks (small ``L_i``) are
    down-weighted by ``L_i**eta``; hard ones are emphasised by the log term.

    How ``eps`` is read: the paper writes ``-L**eta * log(max(eps, 1 - L))`` with
    ``eps`` "the smallest positive integer satisfying max(eps, 1 - L) > 0",
    which no integer can be for every ``L``; it is there to keep the loss finite
    for ``L >= 1``. The literal clamp does that but passes no gradient through
    the log once ``L > 1 - eps``: a task's weight in the meta-gradient,
    ``w_i = dL_DA / dL_i``, then falls (at ``eta = 5``, ``eps = 0.1``: 13.3 at
    ``L = 0.899``, 7.6 at ``0.901``), so the hardest tasks, which the method
    exists to emphasise, count less than moderately hard ones. fewmed keeps the
    paper's log up to ``1 - eps`` and continues it by its tangent line, which
    is finite for every ``L``, continuous with its first derivative, convex and
    increasing. With ``g`` convex, increasing and ``g(0) = 0``, the weight
    ``w(L) = eta L**(eta - 1) g(L) + L**eta g'(L)`` is non-decreasing in ``L``
    for every ``eta >= 0`` (``dw/dL >= eta (eta + 1) L**(eta - 1) g'(L) >= 0``
    because ``g(L) <= L g'(L)``). Below ``1 - eps`` the loss is the paper's.

    Parameters
    ----------
    task_losses : Tensor of shape (n_tasks,)
        Query cross-entropy of each task after adaptation (non-negative).
    eta : float
        Focusing exponent (paper: 5; ablation 1, 3, 5, 7).
    eps : float, default=0.1
        Where the log hands over to its tangent (``1 - L = eps``).

    Returns
    -------
    Tensor
        The scalar meta-loss.

    Examples
    --------
    >>> import torch
    >>> L = torch.tensor([0.5, 0.9])
    >>> round(float(difficulty_aware_loss(L, eta=1.0, eps=0.1)), 4)
    2.4189
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}.")
    # a floor keeps d(L**eta)/dL finite at L = 0 for eta < 1 (0 * inf otherwise)
    L = task_losses.clamp_min(1e-12)  # noqa: N806
    knot = 1.0 - eps
    log_part = -torch.log1p(-torch.clamp(L, max=knot))
    tangent = (L - knot).clamp_min(0.0) / eps
    return (L**eta * (log_part + tangent)).sum()


class DAMLNet(MetaNet):
    """The skorch net under :class:`DAMLClassifier`: one (difficulty-aware) MAML update per batch.

    Each batch of a :class:`~fewmed.fewshot._meta_net.TaskDataset` is a meta-batch of
    ``T`` tasks. ``train_step_single`` adapts every task with ``n_inner_steps``
    differentiable SGD steps, takes the query losses ``L_i`` and back-propagates
    ``mean(L_i)`` (MAML) or, from iteration ``difficulty_start`` on, Eq. 3 divided
    by ``T``; at the switch Adam's moments are reset if ``reset_optimizer``.
    ``validation_step`` adapts first-order with ``n_adapt_steps`` and returns the
    query loss. Per iteration the history's batches hold ``meta_loss`` (= skorch's
    ``train_loss``), ``task_loss``, ``task_losses`` and ``task_weights`` (each
    task's ``L_i`` and ``w_i = dL_meta/dL_i``), ``query_acc``,
    ``effective_tasks``, ``lr`` and ``difficulty``. It reads the hyper-parameters
    (``inner_lr``, ``n_inner_steps``, ``n_adapt_steps``, ``first_order``, ``eta``,
    ``eps``, ``difficulty_start``, ``reset_optimizer``, ``backend``) from its
    ``estimator``, a
    :class:`DAMLClassifier`.
    """

    def initialize(self):
        super().initialize()
        self.switched_ = False
        return self

    def uses_difficulty(self, iteration: int) -> bool:
        """Whether Eq. 3 replaces the mean loss at ``iteration``."""
        est = self.estimator
        start = est.difficulty_start
        return est.eta > 0 and start is not None and iteration >= start

    def get_meta_loss(self, task_losses: torch.Tensor, difficulty: bool) -> torch.Tensor:
        """``mean(L_i)`` (MAML) or Eq. 3 divided by the meta-batch size."""
        if difficulty:
            est = self.estimator
            return difficulty_aware_loss(task_losses, est.eta, est.eps) / len(task_losses)
        return task_losses.mean()

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        XS, YS, XQ, YQ = self.unpack_tasks(batch)  # noqa: N806
        est = self.estimator
        difficulty = self.uses_difficulty(self.n_iter_)
        if difficulty and not self.switched_:
            self.switched_ = True
            if est.reset_optimizer:
                self.optimizer_.state.clear()  # a fresh Adam at the current learning rate
        losses, accs = meta_batch_losses(
            self.module_,
            XS,
            YS,
            XQ,
            YQ,
            lr=est.inner_lr,
            steps=est.n_inner_steps,
            first_order=est.first_order,
            backend=est.backend,
        )
        meta = self.get_meta_loss(losses, difficulty)
        self.check_finite(meta, "Lower meta_lr or inner_lr, or use first_order=True.")
        # each task's weight in the meta-gradient is dL_meta / dL_i; their effective
        # number (sum w)^2 / sum w^2 says how many of the T tasks the update really uses
        tw = torch.autograd.grad(meta, losses, retain_graph=True)[0].detach()
        meta.backward()
        self.record(
            meta_loss=meta.item(),
            task_loss=losses.mean().item(),
            task_losses=losses.detach().cpu().tolist(),
            task_weights=tw.cpu().tolist(),
            query_acc=accs.mean().item(),
            effective_tasks=(tw.sum() ** 2 / (tw**2).sum().clamp_min(1e-30)).item(),
            difficulty=difficulty,
        )
        self.n_iter_ += 1
        return {"loss": meta.detach(), "y_pred": None}

    def validation_step(self, batch, **fit_params):
        self._set_training(False)
        XS, YS, XQ, YQ = self.unpack_tasks(batch)  # noqa: N806
        with torch.enable_grad():
            losses, accs = meta_batch_losses(
                self.module_,
                XS,
                YS,
                XQ,
                YQ,
                lr=self.estimator.inner_lr,
                steps=self.estimator._n_adapt_steps(),
                first_order=True,
                backend="autograd",
            )
        self.record(valid_acc=accs.mean().item())
        return {"loss": losses.mean().detach(), "y_pred": None}


class _DecaySchedule(IterationSchedule):
    """The meta learning rate's decay, read from the estimator at every iteration.

    A warm start that lengthens the run moves the ``"auto"`` step with it.
    """

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        est = net.estimator
        step = est._lr_decay_step()
        self.schedule = _Once(step) if est.lr_decay_step == "auto" else step_decay(step)
        super().on_batch_begin(net, batch=batch, training=training, **kwargs)


class _Once:  # a class, not a closure: the net must pickle
    def __init__(self, step: int | None) -> None:
        self.step = step

    def __call__(self, it: int) -> float:
        return 0.1 if self.step is not None and it >= self.step else 1.0


class DAMLClassifier(MetaNetAttributes, BaseMetaLearner):
    """Difficulty-aware MAML for few-shot classification of rare diseases.

    ``fit`` meta-trains a network on ``n_way``-way ``n_shot``-shot tasks sampled
    from the classes of ``y`` (the common diseases): for each task, ``n_inner_steps``
    SGD steps on the support set, then the query loss ``L_i`` of the adapted
    weights; the meta-loss is the mean of ``L_i`` (MAML) until
    ``difficulty_start``, then the difficulty-aware loss of Eq. 3 divided by the
    meta-batch size. ``adapt`` takes ``n_adapt_steps`` steps on a new task's
    support set; ``predict_proba`` answers for that task; ``score`` is the mean AUC
    over episodes of the classes it is given.

    Parameters
    ----------
    module : {"conv4", "resnet", "vgg"} or nn.Module class, default="conv4"
        Backbone. The paper's Conv4: 4 x [3x3 conv with ``n_filters``, BatchNorm,
        ReLU, 2x2 max-pool]. Classes are built with ``norm="reference"``.
    n_filters : int, default=64
        Width of the backbone.
    n_way : int, default=2
        Classes per task (the paper's tasks are binary).
    n_shot : int, default=5
        Support images per class when meta-training and scoring.
    n_query : int, default=15
        Query images per class (paper: 15).
    meta_batch_size : int, default=4
        Tasks per meta-update (paper: 4).
    n_iterations : int, default=3000
        Meta-updates (paper: 3000).
    meta_lr : float, default=1e-3
        Adam learning rate of the outer loop (paper: 1e-3).
    lr_decay_step : "auto", int or None, default="auto"
        When the meta learning rate is divided by 10. ``"auto"``: once, at
        ``difficulty_start`` (at half of ``n_iterations`` when that is
        ``None``), so the decay follows the run's length and MAML and DAML
        branches that share a warm-up decay together (the paper "divides by 10
        for every 150 epochs" without saying what an epoch is; its one switch
        is at ~1500 of 3000 iterations). An int: every ``lr_decay_step``
        iterations. ``None`` keeps it constant.
    inner_lr : float, default=0.05
        Learning rate of the inner SGD steps.
    n_inner_steps : int, default=5
        Inner SGD steps while meta-training.
    n_adapt_steps : int or None, default=None
        SGD steps of ``adapt`` (and of the validation tasks) on a new task;
        ``None``: ``n_inner_steps``, the number the initialisation was
        meta-trained to adapt with.
    first_order : bool, default=False
        Drop second-order terms of the meta-gradient (FOMAML).
    eta : float, default=5.0
        Focusing exponent of the difficulty-aware loss (paper's best: 5).
        ``eta=0`` switches the difficulty term off: plain MAML (the literal
        formula at ``eta=0``, ``-log(1 - L)``, is not MAML's loss).
    eps : float, default=0.1
        Where the log of Eq. 3 hands over to its tangent line (``1 - L_i = eps``),
        which keeps the loss finite and each task's weight increasing in its
        loss (see :func:`difficulty_aware_loss`).
    difficulty_start : int or None, default=1500
        Iteration from which the difficulty-aware loss replaces the mean loss
        (paper: ~1500 of 3000). ``None`` never switches: plain MAML.
    reset_optimizer : bool, default=False
        Restart Adam's moment estimates at the switch (not in the paper). The
        difficulty-aware loss is smaller than the mean loss, and Adam's
        second-moment memory of the larger MAML gradients shrinks the first
        steps after the switch until it decays (``beta2 = 0.999``).
    augment : bool or Augment, default=True
        Random scaling with crop, rotation and flips of every task image while
        meta-training (the paper's "heavy augmentation").
    backend : {"autograd", "func", "higher", "threads"}, default="autograd"
        Inner-loop implementation (:mod:`fewmed.fewshot._inner_loop`); all give the same
        meta-gradient (tested). ``"autograd"`` (a per-task loop of
        ``torch.func.functional_call`` + ``torch.autograd.grad``) is the default;
        ``"func"`` vectorises the tasks with ``torch.func.vmap``; ``"higher"`` is
        the classic library; ``"threads"`` (CPU) runs the tasks of a meta-batch in
        parallel threads, one torch thread each: faster on a few cores, and equal
        to the one-thread ``"autograd"`` loop rather than to the multi-thread
        one (convolution kernels sum in another order). ``fewmed benchmark
        inner-loop`` times them.
    n_score_tasks : int, default=100
        Episodes drawn by ``score``.
    n_jobs : int or None, default=None
        Workers of ``score`` / ``episode_scores``' evaluation episodes, on the
        active ``joblib.parallel_config`` backend (``None``: 1, ``-1``: every core;
        0 or a float raise ``InvalidParameterError``, a ``ValueError``); the scores
        equal the serial ones. Meta-training does not use it: it scales with
        ``torchrun`` (:mod:`fewmed.distributed`).
    iterations_per_epoch : int, default=100
        Meta-updates per skorch "epoch": one row of ``meta_net_.history`` (timing,
        ``train_loss``, validation) and one chance for epoch callbacks
        (``EarlyStopping``, ``Checkpoint``) to act.
    n_valid_tasks : int, default=50
        Fixed validation tasks drawn from ``fit``'s ``X_valid, y_valid``.
    callbacks : list of skorch callbacks or (name, callback) tuples, default=None
        Added to the net's own (an :class:`~fewmed.fewshot._meta_net.IterationSchedule`
        for ``lr_decay_step``, ``PrintLog`` and a ``ProgressBar`` when
        ``verbose``), e.g. ``EarlyStopping(load_best=True)`` with validation
        tasks, or ``Checkpoint``.
    warm_start : bool, default=False
        Continue a previous ``fit`` (weights, optimizer, sampler state) up to
        ``n_iterations``: run MAML to ``difficulty_start`` once, then branch.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the task sampler and the augmentation.
    verbose : int, default=1
        skorch's progress bar and per-epoch table while meta-training when > 0.

    Attributes
    ----------
    meta_net_ : DAMLNet
        The skorch net that meta-trains (its ``history`` has a row per epoch and
        the per-iteration values in the rows' ``batches``).
    module_ : nn.Module
        The meta-learned network (initial weights of every task), ``meta_net_.module_``.
    history_ : list of dict
        Per iteration, flattened from ``meta_net_.history``: ``meta_loss`` (also
        skorch's ``train_loss``), ``task_loss`` (mean query CE), ``query_acc``,
        ``task_losses`` and ``task_weights`` (per task of the meta-batch: ``L_i``
        and ``w_i = dL_meta/dL_i``), ``effective_tasks`` (``(sum w)^2 / sum w^2``
        of the tasks' weights
        ``w_i = dL_meta/dL_i``: ``meta_batch_size`` for MAML, fewer when the
        difficulty term concentrates the update on the hardest tasks), ``lr`` and
        ``difficulty`` (whether Eq. 3 was used).
    n_iter_ : int
        Meta-updates done.
    train_classes_ : ndarray
        Classes meta-trained on.
    input_shape_ : tuple
        ``(C, H, W)`` of the training images.
    classes_ : ndarray
        Labels of the task last given to ``adapt`` (absent before).

    Notes
    -----
    BatchNorm uses no running statistics: while adapting, a support set is
    normalised with its own statistics, and query / test images with the
    statistics of the support set they are adapted from (reference BatchNorm).
    Nothing leaks from one task to the next, and a prediction does not depend on
    the other test images in the batch.

    Examples
    --------
    >>> import numpy as np
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> data = make_synthetic_lesions(n_classes=6, n_per_class=30, size=16, random_state=0)
    >>> common = data.target < 4
    >>> clf = DAMLClassifier(n_filters=8, n_iterations=4, difficulty_start=2, n_query=5,
    ...                      verbose=0, random_state=0)
    >>> clf = clf.fit(data.images[common], data.target[common])
    >>> rare = ~common
    >>> clf = clf.adapt(data.images[rare][::6], data.target[rare][::6])
    >>> clf.predict_proba(data.images[rare][:3]).shape
    (3, 2)
    """

    _parameter_constraints: dict = {
        **META_CONSTRAINTS,
        "meta_lr": [Interval(Real, 0, None, closed="neither")],
        "lr_decay_step": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left"), None],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "n_inner_steps": [Interval(Integral, 1, None, closed="left")],
        "n_adapt_steps": [Interval(Integral, 0, None, closed="left"), None],
        "first_order": ["boolean"],
        "eta": [Interval(Real, 0, None, closed="left")],
        "eps": [Interval(Real, 0, 1, closed="right")],
        "difficulty_start": [Interval(Integral, 0, None, closed="left"), None],
        "reset_optimizer": ["boolean"],
        "backend": [StrOptions(set(BACKENDS))],
        "warm_start": ["boolean"],
    }

    _adapted_attrs = ("classes_", "adapted_params_", "support_")

    def __init__(
        self,
        *,
        module="conv4",
        n_filters=64,
        n_way=2,
        n_shot=5,
        n_query=15,
        meta_batch_size=4,
        n_iterations=3000,
        meta_lr=1e-3,
        lr_decay_step="auto",
        inner_lr=0.05,
        n_inner_steps=5,
        n_adapt_steps=None,
        first_order=False,
        eta=5.0,
        eps=0.1,
        difficulty_start=1500,
        reset_optimizer=False,
        augment=True,
        backend="autograd",
        n_score_tasks=100,
        n_jobs=None,
        iterations_per_epoch=100,
        n_valid_tasks=50,
        callbacks=None,
        warm_start=False,
        device="cpu",
        random_state=None,
        verbose=1,
    ):
        self.module = module
        self.n_filters = n_filters
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.meta_batch_size = meta_batch_size
        self.n_iterations = n_iterations
        self.meta_lr = meta_lr
        self.lr_decay_step = lr_decay_step
        self.inner_lr = inner_lr
        self.n_inner_steps = n_inner_steps
        self.n_adapt_steps = n_adapt_steps
        self.first_order = first_order
        self.eta = eta
        self.eps = eps
        self.difficulty_start = difficulty_start
        self.reset_optimizer = reset_optimizer
        self.augment = augment
        self.backend = backend
        self.n_score_tasks = n_score_tasks
        self.n_jobs = n_jobs
        self.iterations_per_epoch = iterations_per_epoch
        self.n_valid_tasks = n_valid_tasks
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fit
    _net_class = DAMLNet

    def _backbone_kwargs(self) -> dict:
        return {"n_classes": self.task_shape_[0], "norm": "reference"}

    def _lr_schedule(self) -> tuple[str, IterationSchedule]:
        return ("lr_schedule", _DecaySchedule(step_decay(None)))

    def _lr_decay_step(self) -> int | None:
        """Iterations between the divisions by 10 of the meta learning rate."""
        if self.lr_decay_step != "auto":
            return self.lr_decay_step
        step = self.difficulty_start
        if step is None:
            step = self.n_iterations // 2
        # once: the next division would come after the run's end
        return max(int(step), 1) if step < self.n_iterations else None

    def _n_adapt_steps(self) -> int:
        return self.n_inner_steps if self.n_adapt_steps is None else self.n_adapt_steps

    # --------------------------------------------------------------- adapt
    def _check_n_classes(self, n: int) -> None:
        if n != self.task_shape_[0]:
            raise ValueError(
                f"the support set has {n} classes but the model was meta-trained on "
                f"n_way={self.task_shape_[0]}-way tasks; refit with n_way={n}."
            )

    def _adapt(self, Xs: torch.Tensor, ys: torch.Tensor) -> None:
        device = next(self.module_.parameters()).device
        Xs, ys = Xs.to(device), ys.to(device)
        params = {k: v.detach() for k, v in self.module_.named_parameters()}
        with torch.enable_grad():
            adapted = adapt(
                self.module_,
                params,
                Xs,
                ys,
                lr=self.inner_lr,
                steps=self._n_adapt_steps(),
                first_order=True,
            )
        self.adapted_params_ = {k: v.detach() for k, v in adapted.items()}
        self.support_ = Xs

    def _predict_logits(self, X: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        check_is_fitted(self, "adapted_params_")
        device = self.support_.device
        out = []
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                xb = X[i : i + batch_size].to(device)
                out.append(predict_logits(self.module_, self.adapted_params_, self.support_, xb))
        return torch.cat(out).cpu().numpy()
