"""Difficulty-aware meta-learning (DAML) for rare-disease diagnosis.

Li, Yu, Zhou, Heng. *Difficulty-aware Meta-Learning for Rare Disease Diagnosis*,
MICCAI 2020. MAML on binary k-shot tasks from common diseases; after a warm-up of
plain MAML the meta-loss re-weights tasks by difficulty (Eq. 3)::

    L_DA = sum_i -L_i**eta * log(max(eps, 1 - L_i))
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from fewmed._inner_loop import BACKENDS, adapt, meta_batch_losses, predict_logits
from fewmed._meta import FewShotMixin
from fewmed._validation import resolve_device
from fewmed.model_selection import EpisodeSampler
from fewmed.nn import Augment, build_backbone

__all__ = ["DAMLClassifier", "difficulty_aware_loss"]


def difficulty_aware_loss(task_losses: torch.Tensor, eta: float, eps: float = 0.1) -> torch.Tensor:
    """The difficulty-aware meta-loss of DAML (Eq. 3), summed over tasks.

    ``sum_i -L_i**eta * log(max(eps, 1 - L_i))``. Easy tasks (small ``L_i``) are
    down-weighted by ``L_i**eta``; hard ones are emphasised by the log term.

    The paper calls ``eps`` "the smallest positive integer satisfying
    max(eps, 1 - L) > 0", which no integer can be for all ``L``; fewmed reads it as
    a small positive float floor on ``1 - L``. With ``eps = 0.1`` the log term is
    capped at ``-log(0.1) = 2.3`` and the per-task weight ``dL_DA / dL_i`` stays
    bounded near and above ``L_i = 1`` (it is at most ``L**eta / eps`` from the
    log's derivative), so loss and gradients are finite for every ``eta >= 0``.

    Parameters
    ----------
    task_losses : Tensor of shape (n_tasks,)
        Query cross-entropy of each task after adaptation (non-negative).
    eta : float
        Focusing exponent (paper: 5; ablation 1, 3, 5, 7).
    eps : float, default=0.1
        Floor of ``1 - L_i`` inside the log.

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
    return (-(L**eta) * torch.log(torch.clamp(1.0 - L, min=eps))).sum()


class DAMLClassifier(FewShotMixin):
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
    module : {"conv4", "resnet"} or nn.Module class, default="conv4"
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
    lr_decay_step : int or None, default=2000
        Divide the meta learning rate by 10 every ``lr_decay_step`` iterations
        (the paper divides by 10 on a schedule; ``None`` keeps it constant).
    inner_lr : float, default=0.05
        Learning rate of the inner SGD steps.
    n_inner_steps : int, default=5
        Inner SGD steps while meta-training.
    n_adapt_steps : int, default=10
        SGD steps of ``adapt`` on a new task.
    first_order : bool, default=False
        Drop second-order terms of the meta-gradient (FOMAML).
    eta : float, default=5.0
        Focusing exponent of the difficulty-aware loss (paper's best: 5).
        ``eta=0`` switches the difficulty term off: plain MAML (the literal
        formula at ``eta=0``, ``-log(1 - L)``, is not MAML's loss).
    eps : float, default=0.1
        Floor of ``1 - L_i`` inside the log (see :func:`difficulty_aware_loss`).
    difficulty_start : int or None, default=1500
        Iteration from which the difficulty-aware loss replaces the mean loss
        (paper: ~1500 of 3000). ``None`` never switches: plain MAML.
    reset_optimizer : bool, default=True
        Restart Adam's moment estimates at the switch: the difficulty-aware loss
        is 10-100x smaller than the mean loss, and Adam's second-moment memory
        of the large MAML gradients would otherwise shrink the steps for
        hundreds of iterations.
    augment : bool or Augment, default=True
        Random scaling with crop, rotation and flips of every task image while
        meta-training (the paper's "heavy augmentation").
    backend : {"autograd", "func", "higher"}, default="autograd"
        Inner-loop implementation (:mod:`fewmed._inner_loop`); all give the same
        meta-gradient (tested). ``"autograd"`` (a per-task loop of
        ``torch.func.functional_call`` + ``torch.autograd.grad``) measured fastest
        on CPU; ``"func"`` vectorises the tasks with ``torch.func.vmap``;
        ``"higher"`` is the classic library. ``fewmed benchmark inner-loop`` times
        them.
    n_score_tasks : int, default=100
        Episodes drawn by ``score``.
    warm_start : bool, default=False
        Continue a previous ``fit`` (weights, optimizer, sampler state) up to
        ``n_iterations``: run MAML to ``difficulty_start`` once, then branch.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the task sampler and the augmentation.
    verbose : int, default=1
        Progress bar while meta-training when > 0.

    Attributes
    ----------
    module_ : nn.Module
        The meta-learned network (initial weights of every task).
    history_ : list of dict
        Per iteration: ``meta_loss``, ``task_loss`` (mean query CE), ``query_acc``,
        ``effective_tasks`` (``(sum w)^2 / sum w^2`` of the tasks' weights
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
        "n_filters": [Interval(Integral, 1, None, closed="left")],
        "n_way": [Interval(Integral, 2, None, closed="left")],
        "n_shot": [Interval(Integral, 1, None, closed="left")],
        "n_query": [Interval(Integral, 1, None, closed="left")],
        "meta_batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_iterations": [Interval(Integral, 0, None, closed="left")],
        "meta_lr": [Interval(Real, 0, None, closed="neither")],
        "lr_decay_step": [Interval(Integral, 1, None, closed="left"), None],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "n_inner_steps": [Interval(Integral, 1, None, closed="left")],
        "n_adapt_steps": [Interval(Integral, 0, None, closed="left")],
        "first_order": ["boolean"],
        "eta": [Interval(Real, 0, None, closed="left")],
        "eps": [Interval(Real, 0, 1, closed="right")],
        "difficulty_start": [Interval(Integral, 0, None, closed="left"), None],
        "reset_optimizer": ["boolean"],
        "backend": [StrOptions(set(BACKENDS))],
        "n_score_tasks": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
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
        lr_decay_step=2000,
        inner_lr=0.05,
        n_inner_steps=5,
        n_adapt_steps=10,
        first_order=False,
        eta=5.0,
        eps=0.1,
        difficulty_start=1500,
        reset_optimizer=True,
        augment=True,
        backend="autograd",
        n_score_tasks=100,
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
        self.warm_start = warm_start
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fit
    def _uses_difficulty(self, iteration: int) -> bool:
        return (
            self.eta > 0
            and self.difficulty_start is not None
            and iteration >= self.difficulty_start
        )

    def _init_state(self, seed: int) -> None:
        device = resolve_device(self.device)
        c, h, w = self.input_shape_
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build_backbone(
                self.module,
                in_channels=c,
                input_shape=(h, w),
                n_classes=self.task_shape_[0],
                n_filters=self.n_filters,
                norm="reference",
            )
        self.module_ = module.to(device)
        self.optimizer_ = torch.optim.Adam(self.module_.parameters(), lr=self.meta_lr)
        self.n_iter_ = 0
        self.history_ = []
        self._episode_rng = np.random.default_rng(seed)
        self._torch_state = torch.Generator().manual_seed(seed).get_state()
        self._switched = False

    def fit(self, X, y=None):
        """Meta-train on tasks sampled from ``(X, y)`` or a ``TaskDistribution``.

        Parameters
        ----------
        X : array-like of images or TaskDistribution
            Images of the common classes, ``(n, H, W[, C])`` uint8 or
            ``(n, C, H, W)`` float.
        y : array-like of shape (n,), default=None
            Their labels (omit with a ``TaskDistribution``).

        Returns
        -------
        self
        """
        self._validate_params()
        old_shape = getattr(self, "input_shape_", None)
        Xt, y = self._validate_fit_input(X, y)
        n_way, n_shot, n_query = self.task_shape_
        sampler = EpisodeSampler(n_way, n_shot, n_query)
        sampler.check(y)
        resume = self.warm_start and hasattr(self, "module_") and old_shape == self.input_shape_
        if not resume:
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))
            self._init_state(seed)
        for a in self._adapted_attrs:
            if hasattr(self, a):
                delattr(self, a)
        self._meta_train(torch.from_numpy(Xt), y)
        return self

    def _augmenter(self):
        if self.augment is True:
            return Augment()
        if self.augment in (False, None):
            return None
        if not callable(self.augment):
            raise ValueError(f"augment must be a bool or an Augment, got {self.augment!r}.")
        return self.augment

    def _meta_train(self, X: torch.Tensor, y: np.ndarray) -> None:
        n_way, n_shot, n_query = self.task_shape_
        device = next(self.module_.parameters()).device
        sampler = EpisodeSampler(n_way, n_shot, n_query, random_state=self._episode_rng)
        episodes = sampler.sample(y)
        gen = torch.Generator()
        gen.set_state(self._torch_state)
        aug = self._augmenter()
        T = self.meta_batch_size  # noqa: N806
        c, h, w = self.input_shape_
        self.module_.train()
        start = self.n_iter_
        bar = tqdm(
            range(start, self.n_iterations),
            disable=self.verbose <= 0,
            desc="meta-training",
            initial=start,
            total=self.n_iterations,
            leave=False,
        )
        for it in bar:
            eps_ = [next(episodes) for _ in range(T)]
            s_idx = np.concatenate([e.support_idx for e in eps_])
            q_idx = np.concatenate([e.query_idx for e in eps_])
            xs, xq = X[s_idx], X[q_idx]
            if aug is not None:
                xs, xq = aug(xs, generator=gen), aug(xq, generator=gen)
            XS = xs.reshape(T, -1, c, h, w).to(device)  # noqa: N806
            XQ = xq.reshape(T, -1, c, h, w).to(device)  # noqa: N806
            YS = torch.as_tensor(np.stack([e.support_y for e in eps_]), device=device)  # noqa: N806
            YQ = torch.as_tensor(np.stack([e.query_y for e in eps_]), device=device)  # noqa: N806
            difficulty = self._uses_difficulty(it)
            if difficulty and not self._switched:
                self._switched = True
                if self.reset_optimizer:
                    self.optimizer_ = torch.optim.Adam(self.module_.parameters(), lr=self._lr(it))
            for group in self.optimizer_.param_groups:
                group["lr"] = self._lr(it)
            losses, accs = meta_batch_losses(
                self.module_,
                XS,
                YS,
                XQ,
                YQ,
                lr=self.inner_lr,
                steps=self.n_inner_steps,
                first_order=self.first_order,
                backend=self.backend,
            )
            if difficulty:
                meta = difficulty_aware_loss(losses, self.eta, self.eps) / T
            else:
                meta = losses.mean()
            if not torch.isfinite(meta):
                raise FloatingPointError(
                    f"meta-training diverged at iteration {it}: the meta-loss is {meta.item()}. "
                    "Lower meta_lr or inner_lr, or use first_order=True."
                )
            # each task's weight in the meta-gradient is dL_meta / dL_i; their effective
            # number (sum w)^2 / sum w^2 says how many of the T tasks the update really uses
            tw = torch.autograd.grad(meta, losses, retain_graph=True)[0].detach()
            self.optimizer_.zero_grad(set_to_none=True)
            meta.backward()
            self.optimizer_.step()
            self.n_iter_ = it + 1
            rec = {
                "iteration": it,
                "meta_loss": meta.item(),
                "task_loss": losses.mean().item(),
                "query_acc": accs.mean().item(),
                "effective_tasks": (tw.sum() ** 2 / (tw**2).sum().clamp_min(1e-30)).item(),
                "lr": self._lr(it),
                "difficulty": difficulty,
            }
            self.history_.append(rec)
            if self.verbose > 0 and it % 10 == 0:
                bar.set_postfix(loss=f"{rec['task_loss']:.3f}", acc=f"{rec['query_acc']:.2f}")
        bar.close()
        self._torch_state = gen.get_state()

    def _lr(self, it: int) -> float:
        if self.lr_decay_step is None:
            return self.meta_lr
        return self.meta_lr * 0.1 ** (it // self.lr_decay_step)

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
                steps=self.n_adapt_steps,
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
