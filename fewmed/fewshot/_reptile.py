"""Reptile: a meta-learned initialization for fine-tuning on small medical datasets.

Hu, Tomczak and Welling, *Meta-Learning for Medical Image Classification* (MIDL
2018), with Reptile from Nichol and Schulman, *On First-Order Meta-Learning
Algorithms* (2018). Reptile trains an initialization ``phi`` on N-way K-shot tasks
of a source domain: for every task of a meta-batch, a few (first-order) steps of
Adam from ``phi`` give ``phi_i``, then

    phi <- phi + epsilon * mean_i(phi_i - phi),

with ``epsilon`` annealed linearly from ``meta_step_size`` to
``meta_step_size_final``. Every weight except the classifier head goes to a new
network, BatchNorm is removed, and the network is fine-tuned on the target set
(Adam, lr 1e-3, batch 32, early stopping on validation data).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from fewmed._finetune import fine_tune, pretrain, train_steps, transfer
from fewmed._validation import resolve_device
from fewmed.fewshot._base import META_CONSTRAINTS, BaseMetaLearner
from fewmed.fewshot._meta_net import IterationSchedule, linear_anneal
from fewmed.fewshot._reptile_net import ReptileNet
from fewmed.nn import make_augment

__all__ = ["ReptileInitializer"]


# --------------------------------------------------------------------------- estimator
class ReptileInitializer(BaseMetaLearner):
    """A Reptile-learned initialization, fine-tuned on a small target dataset.

    ``fit(X_source, y_source)`` learns the initialization ``module_`` on the source
    domain; ``adapt(X, y, X_val=None, y_val=None)`` copies every weight except the
    head into a network for ``y``'s classes, removes BatchNorm and fine-tunes it;
    ``predict_proba`` / ``predict`` answer for the adapted task. ``init`` selects
    the paper's method (``"reptile"``) or one of its two baselines: a random
    initialization (``"random"``, ``fit`` only records the input shape) and
    supervised pre-training on all source classes at once (``"supervised"``).

    Parameters
    ----------
    init : {"reptile", "random", "supervised"}, default="reptile"
        How ``fit`` builds the initialization.
    module : {"conv4", "resnet", "vgg"} or nn.Module class, default="conv4"
        Backbone (built with BatchNorm; the paper uses Reptile's Conv4).
    n_filters : int, default=32
        Width of the backbone (Reptile's mini-ImageNet Conv4: 32).
    n_way : int, default=5
        Classes per meta-training task (paper: 5-way).
    n_shot : int, default=5
        Support images per class of ``score``'s episodes and of the validation
        tasks (paper: 5-shot evaluation).
    n_train_shot : int or None, default=15
        Images per class of a meta-training task (Reptile's "train shots" for
        5-shot mini-ImageNet, Table 4: 15); ``None``: ``n_shot``.
    n_query : int, default=15
        Query images per class of ``score``'s episodes.
    meta_batch_size : int, default=5
        Tasks per outer step (Reptile, mini-ImageNet: 5).
    n_iterations : int, default=1000
        Outer steps (Reptile: 100,000 on a GPU).
    meta_step_size : float, default=1.0
        Initial outer step size ``epsilon`` (Reptile: 1.0).
    meta_step_size_final : float, default=0.0
        ``epsilon`` at the last iteration; linear annealing in between.
    inner_lr : float, default=1e-3
        Adam learning rate of the inner loop (Reptile: 1e-3).
    inner_beta1 : float, default=0.0
        Adam's ``beta1`` in the inner loop (Reptile: 0).
    n_inner_steps : int, default=8
        Inner Adam steps per task (Reptile, mini-ImageNet: 8).
    inner_batch_size : int, default=10
        Images per inner step, drawn without replacement from the task (Reptile: 10).
    pretrain_epochs : int, default=30
        Maximum epochs of ``init="supervised"`` (early stopping on a stratified
        ``validation_fraction`` of the source, best weights restored).
    remove_batchnorm : bool or {"drop", "fold"}, default=True
        Remove BatchNorm from the network that is adapted (paper). ``True`` or
        ``"drop"`` replaces it by an identity (the convolutions keep their
        weights and their biases, which start at zero as in the reference
        implementation and stay there under BatchNorm, so nothing random is
        left), ``"fold"`` merges it into the preceding convolution (same
        function, no BatchNorm layer: its learned scale and shift are kept),
        ``False`` keeps it.
    fine_tune : {"auto", "few-shot", "full"}, default="auto"
        How ``adapt`` trains. ``"few-shot"``: ``n_adapt_steps`` inner-loop steps on
        the support set. ``"full"``: skorch training with Adam (``lr``,
        betas 0.9/0.999), batches of ``batch_size``, ``EarlyStopping`` on
        validation data with the best weights restored. ``"auto"``: ``"full"``
        when validation data is passed or every class has more than
        ``2 * n_shot`` images, else ``"few-shot"``.
    n_adapt_steps : int, default=50
        Steps of the few-shot adaptation (Reptile's evaluation: 50).
    lr : float, default=1e-3
        Adam learning rate of the full fine-tuning (paper: 1e-3).
    batch_size : int, default=32
        Batch size of the full fine-tuning (paper: 32).
    max_epochs : int, default=100
        Maximum epochs of the full fine-tuning.
    patience : int, default=10
        Epochs without improvement of ``monitor`` before stopping.
    monitor : {"valid_loss", "valid_qwk", "valid_acc"}, default="valid_loss"
        Validation score that early stopping follows.
    validation_fraction : float, default=0.1
        Stratified share of the training data held out for early stopping when
        ``adapt`` (or ``init="supervised"``) gets no validation data.
    augment : bool, dict or Augment, default=False
        Random scaling, rotation and flips while meta-training, pre-training and
        fine-tuning.
    n_score_tasks : int, default=100
        Episodes drawn by ``score``.
    n_jobs : int or None, default=None
        Workers of ``score`` / ``episode_scores``' evaluation episodes, on the
        active ``joblib.parallel_config`` backend (``None``: 1, ``-1``: every core;
        0 or a float raise ``InvalidParameterError``, a ``ValueError``); the scores
        equal the serial ones. Meta-training does not use it: it scales with
        ``torchrun`` (:mod:`fewmed.distributed`).
    iterations_per_epoch : int, default=100
        Outer steps per skorch "epoch" of meta-training (a row of
        ``meta_net_.history``; when epoch callbacks act).
    n_valid_tasks : int, default=50
        Fixed validation tasks drawn from ``fit``'s ``X_valid, y_valid``.
    meta_patience : int or None, default=5
        With validation tasks, stop meta-training after ``meta_patience``
        epochs (of ``iterations_per_epoch`` outer steps) without a lower
        validation loss and restore the best initialization (the paper selects
        every model, the meta-learned one included, by early stopping).
        ``None``: run all ``n_iterations``.
    callbacks : list of skorch callbacks or (name, callback) tuples, default=None
        Added to the meta-training net's own (the ``epsilon`` schedule,
        ``PrintLog`` and a ``ProgressBar`` when ``verbose``), e.g. ``Checkpoint``
        or ``EarlyStopping`` on validation tasks.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the tasks, the head and the fine-tuning (no global RNG).
    verbose : int, default=1
        skorch's progress bar and per-epoch table while meta-training when > 0.

    Attributes
    ----------
    module_ : nn.Module
        The initialization (with BatchNorm and an ``n_way`` head, or the source
        head for ``init="supervised"``).
    history_ : list of dict
        Per outer step (``init="reptile"``, flattened from ``meta_net_.history``):
        ``iteration``, ``epsilon`` and ``task_loss`` (mean inner-loop loss); per
        epoch of pre-training (``init="supervised"``); empty for ``init="random"``.
    meta_net_ : ReptileNet or None
        The skorch net that meta-trained (``init="reptile"``), else ``None``.
    n_iter_ : int
        Outer steps done.
    train_classes_ : ndarray
        Source classes.
    input_shape_ : tuple
        ``(C, H, W)`` of the source images; targets must match it.
    classes_ : ndarray
        Labels of the task given to ``adapt`` (absent before).
    adapted_module_ : nn.Module
        The fine-tuned network (absent before ``adapt``).
    net_ : fewmed._finetune.SupervisedNet or None
        The skorch net of the last full fine-tuning (its ``history`` has
        ``train_loss``, ``valid_loss``, ``valid_acc``, ``valid_qwk`` per epoch);
        ``None`` after a few-shot adaptation.

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> d = make_synthetic_lesions(n_classes=6, n_per_class=30, size=16, random_state=0)
    >>> src, tgt = d.target < 3, d.target >= 3
    >>> rep = ReptileInitializer(n_way=3, n_filters=8, n_iterations=3, max_epochs=2,
    ...                          verbose=0, random_state=0)
    >>> rep = rep.fit(d.images[src], d.target[src])
    >>> rep = rep.adapt(d.images[tgt], d.target[tgt])
    >>> rep.predict_proba(d.images[tgt][:2]).shape
    (2, 3)
    """

    _parameter_constraints: dict = {
        **META_CONSTRAINTS,
        "init": [StrOptions({"reptile", "random", "supervised"})],
        "n_query": [Interval(Integral, 0, None, closed="left")],
        "n_train_shot": [Interval(Integral, 1, None, closed="left"), None],
        "meta_patience": [Interval(Integral, 1, None, closed="left"), None],
        "meta_step_size": [Interval(Real, 0, None, closed="left")],
        "meta_step_size_final": [Interval(Real, 0, None, closed="left")],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "inner_beta1": [Interval(Real, 0, 1, closed="left")],
        "n_inner_steps": [Interval(Integral, 1, None, closed="left")],
        "inner_batch_size": [Interval(Integral, 1, None, closed="left")],
        "pretrain_epochs": [Interval(Integral, 0, None, closed="left")],
        "remove_batchnorm": ["boolean", StrOptions({"drop", "fold"})],
        "fine_tune": [StrOptions({"auto", "few-shot", "full"})],
        "n_adapt_steps": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "monitor": [StrOptions({"valid_loss", "valid_qwk", "valid_acc"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    }

    _adapted_attrs = ("classes_", "adapted_module_", "net_")

    def __init__(
        self,
        *,
        init="reptile",
        module="conv4",
        n_filters=32,
        n_way=5,
        n_shot=5,
        n_train_shot=15,
        n_query=15,
        meta_batch_size=5,
        n_iterations=1000,
        meta_step_size=1.0,
        meta_step_size_final=0.0,
        inner_lr=1e-3,
        inner_beta1=0.0,
        n_inner_steps=8,
        inner_batch_size=10,
        pretrain_epochs=30,
        remove_batchnorm=True,
        fine_tune="auto",
        n_adapt_steps=50,
        lr=1e-3,
        batch_size=32,
        max_epochs=100,
        patience=10,
        monitor="valid_loss",
        validation_fraction=0.1,
        augment=False,
        n_score_tasks=100,
        n_jobs=None,
        iterations_per_epoch=100,
        n_valid_tasks=50,
        meta_patience=5,
        callbacks=None,
        device="cpu",
        random_state=None,
        verbose=1,
    ):
        self.init = init
        self.module = module
        self.n_filters = n_filters
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_train_shot = n_train_shot
        self.n_query = n_query
        self.meta_batch_size = meta_batch_size
        self.n_iterations = n_iterations
        self.meta_step_size = meta_step_size
        self.meta_step_size_final = meta_step_size_final
        self.inner_lr = inner_lr
        self.inner_beta1 = inner_beta1
        self.n_inner_steps = n_inner_steps
        self.inner_batch_size = inner_batch_size
        self.pretrain_epochs = pretrain_epochs
        self.remove_batchnorm = remove_batchnorm
        self.fine_tune = fine_tune
        self.n_adapt_steps = n_adapt_steps
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.monitor = monitor
        self.validation_fraction = validation_fraction
        self.augment = augment
        self.n_score_tasks = n_score_tasks
        self.n_jobs = n_jobs
        self.iterations_per_epoch = iterations_per_epoch
        self.n_valid_tasks = n_valid_tasks
        self.meta_patience = meta_patience
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fit
    def _seeded_backbone(self, seed: int, n_classes: int | None, **kwargs) -> nn.Module:
        """The backbone with its convolutions' biases at zero (the reference's init).

        Under BatchNorm a bias before it has no effect and, mathematically, no
        gradient, so whatever it starts at survives meta-training and
        pre-training; at zero, removing BatchNorm (``"drop"``) exposes nothing
        random. They are also frozen until the transfer: their numerical gradient
        is rounding noise (~1e-9), which Adam would scale up to full-size steps.
        """
        module = super()._seeded_backbone(seed, n_classes, **kwargs)
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    m.bias.zero_()
                    m.bias.requires_grad_(False)
        return module

    def _build(self, n_classes: int, seed: int) -> nn.Module:
        module = self._seeded_backbone(seed, **{**self._backbone_kwargs(), "n_classes": n_classes})
        return module.to(resolve_device(self.device))

    def fit(self, X, y=None, X_valid=None, y_valid=None):
        """Learn the initialization on the source domain.

        Parameters
        ----------
        X : array-like of images or TaskDistribution
            Source images, ``(n, H, W[, C])`` uint8 or ``(n, C, H, W)`` float.
        y : array-like of shape (n,), default=None
            Source labels (omit with a ``TaskDistribution``).
        X_valid, y_valid : array-like, default=None
            ``init="reptile"`` only: images and labels of ``n_valid_tasks`` fixed
            validation tasks, scored every epoch (``valid_loss`` / ``valid_acc``
            after ``n_adapt_steps`` on the support set) for callbacks such as
            ``EarlyStopping``.

        Returns
        -------
        self
        """
        return super().fit(X, y, X_valid=X_valid, y_valid=y_valid)

    def _fit(self, Xt, y, X_valid=None, y_valid=None, fitted_shape=None) -> None:
        self.history_ = []
        self.n_iter_ = 0
        self.meta_net_ = None
        if self.init == "reptile":
            self._validating = X_valid is not None
            try:
                super()._fit(Xt, y, X_valid, y_valid)
            finally:
                del self._validating
            self.seed_ = self.meta_net_.seed
            self.module_ = self.meta_net_.module_
            self.history_ = self.meta_net_.iteration_records()
            self.n_iter_ = self.meta_net_.n_iter_
            return
        self.seed_ = int(check_random_state(self.random_state).randint(2**31 - 1))
        if self.init == "supervised":
            self._pretrain(Xt, y)
        else:
            self.module_ = self._build(self.task_shape_[0], self.seed_)

    # -------------------------------------------------- meta-training hooks
    _net_class = ReptileNet
    _meta_optimizer = torch.optim.SGD

    def _backbone_kwargs(self) -> dict:
        return {"n_classes": self.task_shape_[0], "norm": "batch"}

    def _lr_schedule(self) -> tuple[str, IterationSchedule]:
        schedule = linear_anneal(self.meta_step_size, self.meta_step_size_final, self.n_iterations)
        return ("epsilon_schedule", IterationSchedule(schedule, absolute=True))

    def _outer_lr(self) -> float:
        return self.meta_step_size

    def _train_n_query(self) -> int:
        return 0  # Reptile trains on the support sets only

    def _train_n_shot(self) -> int:
        return self.task_shape_[1] if self.n_train_shot is None else self.n_train_shot

    def _make_net(self, seed: int):
        net = super()._make_net(seed)
        if getattr(self, "_validating", False) and self.meta_patience is not None:
            from skorch.callbacks import EarlyStopping

            stop = EarlyStopping(patience=self.meta_patience, load_best=True, sink=_silent)
            net.callbacks = [*net.callbacks, ("meta_early_stopping", stop)]
        return net

    def _pretrain(self, Xt: np.ndarray, y: np.ndarray) -> None:
        classes, codes = np.unique(y, return_inverse=True)
        module = self._build(len(classes), self.seed_)
        if self.pretrain_epochs == 0:
            self.module_ = module
            return
        self.module_, history = pretrain(
            module, Xt, codes, **self._fine_tune_params(self.pretrain_epochs, self.seed_ + 1)
        )
        self.history_ = [{k: v for k, v in row.items() if k != "batches"} for row in history]

    # --------------------------------------------------------------- export
    def _transfer(self, n_classes: int, seed: int) -> nn.Module:
        model = transfer(self.module_, n_classes, seed, remove_batchnorm=self.remove_batchnorm)
        for p in model.parameters():  # the fine-tuning trains every weight, biases too
            p.requires_grad_(True)
        return model

    def init_module(self, n_classes: int, *, random_state: int | None = None) -> nn.Module:
        """A new network for ``n_classes`` starting from the learned initialization.

        Every weight but the head is copied from ``module_``; the head is new
        (seeded); BatchNorm is removed as ``remove_batchnorm`` says. Pass it as
        the ``module`` of a plain :class:`skorch.NeuralNetClassifier`.

        Parameters
        ----------
        n_classes : int
            Outputs of the new head.
        random_state : int or None, default=None
            Seed of the head (default: derived from the estimator's ``random_state``).

        Returns
        -------
        nn.Module

        Examples
        --------
        >>> from fewmed.datasets import make_synthetic_lesions
        >>> d = make_synthetic_lesions(n_classes=3, n_per_class=20, size=16, random_state=0)
        >>> rep = ReptileInitializer(init="random", n_way=3, n_filters=8, verbose=0)
        >>> rep.fit(d.images, d.target).init_module(4).head.out_features
        4
        """
        check_is_fitted(self, "module_")
        if not isinstance(n_classes, Integral) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}.")
        seed = self._adapt_seed() if random_state is None else int(random_state)
        return self._transfer(int(n_classes), seed)

    def _adapt_seed(self) -> int:
        """Seed of the head and the fine-tuning, drawn from ``random_state`` at each call."""
        return int(check_random_state(self.random_state).randint(2**31 - 5))

    # --------------------------------------------------------------- adapt
    def _fine_tune_params(self, max_epochs: int, seed: int) -> dict:
        """:func:`fewmed._finetune.fine_tune`'s settings: Adam, early stopping (paper)."""
        return dict(
            validation_fraction=self.validation_fraction,
            max_epochs=max_epochs,
            patience=self.patience,
            monitor=self.monitor,
            lr=self.lr,
            batch_size=self.batch_size,
            augment=self.augment,
            device=self.device,
            random_state=seed,
        )

    def adapt(self, X, y, X_val=None, y_val=None):
        """Transfer the initialization to ``y``'s classes and fine-tune it.

        Parameters
        ----------
        X : array-like of images
            Target training images, of the source's ``(C, H, W)``.
        y : array-like of shape (n,)
            Their labels (any values); ``classes_`` becomes ``unique(y)``.
        X_val, y_val : array-like, default=None
            Validation data for early stopping (labels among ``classes_``). Without
            them a stratified ``validation_fraction`` of ``(X, y)`` is held out.

        Returns
        -------
        self
        """
        if X_val is None and y_val is None and self.fine_tune != "full":
            counts = np.unique(np.asarray(y), return_counts=True)[1] if y is not None else [0]
            if self.fine_tune == "few-shot" or min(counts) <= 2 * self.n_shot:
                self._mode = "few-shot"
                try:
                    return super().adapt(X, y)
                finally:
                    del self._mode
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither.")
        self._mode = "full"
        self._val = X_val, y_val
        try:
            return super().adapt(X, y)
        finally:
            del self._mode, self._val

    def _adapt(self, Xs: torch.Tensor, ys: torch.Tensor) -> None:
        n_classes = len(self.classes_)
        mode = getattr(self, "_mode", "few-shot")
        seed = self._adapt_seed()
        model = self._transfer(n_classes, seed)
        if mode == "few-shot":
            self.net_ = None
            device = next(model.parameters()).device
            model.train()
            train_steps(
                model,
                Xs.to(device),
                ys.to(device),
                self.n_adapt_steps,
                torch.Generator().manual_seed(seed + 1),
                lr=self.inner_lr,
                betas=(self.inner_beta1, 0.999),
                batch_size=self.inner_batch_size,
                augment=make_augment(self.augment),
            )
            self.adapted_module_ = model.eval()
            return
        X_val, y_val = self._val
        codes = ys.numpy()
        if X_val is not None:
            Xv = self._check_X(X_val, name="X_val").numpy()
            yv = np.asarray(y_val)
            if yv.ndim != 1 or len(yv) != len(Xv):
                raise ValueError(
                    f"y_val must be 1-D with one label per image; got shape {yv.shape} for "
                    f"{len(Xv)} images."
                )
            unknown = ~np.isin(yv, self.classes_)
            if unknown.any():
                raise ValueError(
                    f"y_val has labels {np.unique(yv[unknown]).tolist()} that are not in y's "
                    f"classes {self.classes_.tolist()}."
                )
            yv = np.searchsorted(self.classes_, yv)
        else:
            Xv = yv = None
        params = self._fine_tune_params(self.max_epochs, seed + 2)
        net = fine_tune(model, Xs.numpy(), codes, X_val=Xv, y_val=yv, **params)
        self.net_ = net
        self.adapted_module_ = net.module_.eval()

    def _predict_logits(self, X: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        check_is_fitted(self, "adapted_module_")
        model = self.adapted_module_
        device = next(model.parameters()).device
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                out.append(model(X[i : i + batch_size].to(device)).cpu())
        return torch.cat(out).numpy()


def _silent(*args, **kwargs) -> None:  # a function, not a lambda: the net must pickle
    return None
