"""Prototypical Networks: few-shot classification by distances to class means.

Snell, Swersky, Zemel. *Prototypical Networks for Few-shot Learning*, NeurIPS
2017. A network embeds images; a class's prototype is the mean embedding of its
support images, and an image is classified by a softmax over the negative squared
Euclidean distances to the prototypes. The embedding is meta-trained on episodes
of the common classes to minimise that softmax's cross-entropy on query images;
a new task needs no gradient step, only the prototypes of its support set.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from fewmed.fewshot._base import META_CONSTRAINTS, BaseMetaLearner, MetaNetAttributes
from fewmed.fewshot._meta_net import IterationSchedule, MetaNet, step_decay

__all__ = [
    "ProtoNetClassifier",
    "ProtoNet",
    "embed",
    "prototypes",
    "squared_distances",
    "prototypical_loss",
]


def embed(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Embedding vectors ``(n, d)`` of images by a backbone without its head.

    A fewmed backbone (``forward_features`` / ``embed``) gives its flattened
    (Conv4) or pooled (ResNet) feature map; any other module its flattened output.
    """
    if hasattr(module, "forward_features") and hasattr(module, "embed"):
        return module.embed(module.forward_features(x))
    return module(x).flatten(1)


def prototypes(support: torch.Tensor, ys: torch.Tensor, n_classes: int | None = None):
    """Mean support embedding of every class (the prototypes).

    Parameters
    ----------
    support : Tensor of shape (..., n, d)
        Support embeddings (leading dimensions: tasks).
    ys : Tensor of shape (..., n)
        Their labels in ``0 .. n_classes - 1``.
    n_classes : int, default=None
        Number of classes; ``None`` is ``ys.max() + 1``.

    Returns
    -------
    Tensor of shape (..., n_classes, d)

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    >>> prototypes(z, torch.tensor([0, 0, 1])).tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    """
    n_classes = int(ys.max()) + 1 if n_classes is None else int(n_classes)
    onehot = F.one_hot(ys.long(), n_classes).to(support.dtype)  # (..., n, K)
    sums = onehot.transpose(-1, -2) @ support
    return sums / onehot.sum(-2).unsqueeze(-1)


def squared_distances(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(..., m, K)`` of embeddings ``(..., m, d)`` to ``(..., K, d)``.

    Computed as the sum of squared differences (exact, and with a finite
    gradient where a distance is 0, unlike ``torch.cdist``).

    Parameters
    ----------
    x : Tensor of shape (..., m, d)
        Embeddings (e.g. a task's query embeddings).
    protos : Tensor of shape (..., K, d)
        Prototypes (one per class), with the same leading dimensions as ``x``.

    Returns
    -------
    Tensor of shape (..., m, K)
        ``out[..., i, k] = ||x[..., i, :] - protos[..., k, :]||^2``.

    Examples
    --------
    >>> import torch
    >>> squared_distances(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 3.0]]))
    tensor([[2., 4.]])
    """
    return (x.unsqueeze(-2) - protos.unsqueeze(-3)).square().sum(-1)


def prototypical_loss(
    support: torch.Tensor, ys: torch.Tensor, query: torch.Tensor, yq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query cross-entropy and accuracy of each task under its prototypes.

    The logits of a query embedding are the negative squared distances to the
    prototypes of its task's support set (Snell et al., Eq. 2).

    Parameters
    ----------
    support : Tensor of shape (T, n_support, d)
    ys : Tensor of shape (T, n_support)
        Support labels in ``0 .. n_way - 1``; every class present in every task.
    query : Tensor of shape (T, n_query, d)
    yq : Tensor of shape (T, n_query)

    Returns
    -------
    losses, accuracies : Tensor of shape (T,)

    Examples
    --------
    >>> import torch
    >>> zs = torch.tensor([[[0.0], [2.0]]])
    >>> loss, acc = prototypical_loss(zs, torch.tensor([[0, 1]]), zs, torch.tensor([[0, 1]]))
    >>> round(float(loss), 4), float(acc)  # log(1 + exp(-4))
    (0.0181, 1.0)
    """
    n_classes = int(ys.max()) + 1
    logits = -squared_distances(query, prototypes(support, ys, n_classes))
    ce = F.cross_entropy(logits.flatten(0, -2), yq.flatten().long(), reduction="none")
    correct = (logits.argmax(-1) == yq).to(logits.dtype)
    return ce.view(yq.shape).mean(-1), correct.mean(-1)


class ProtoNet(MetaNet):
    """The skorch net under :class:`ProtoNetClassifier`: one prototypical-loss step per batch.

    Each batch of a :class:`~fewmed.fewshot._meta_net.TaskDataset` is a meta-batch of
    ``T`` tasks. ``train_step_single`` embeds the support and query images of all
    tasks in one forward pass (BatchNorm in training mode, normalising with the
    meta-batch's statistics and updating the running ones), computes every task's
    prototypes and the query cross-entropy of the negative squared distances
    (:func:`prototypical_loss`), and back-propagates their mean over the tasks.
    ``validation_step`` does the same without gradients, in evaluation mode (the
    running statistics, as at test time). Per iteration the history's batches hold
    ``train_loss`` (= ``task_loss``, the mean query loss), ``query_acc`` and ``lr``.
    """

    def embed_tasks(self, XS: torch.Tensor, XQ: torch.Tensor):  # noqa: N803
        """Embeddings ``(T, n_support, d)`` and ``(T, n_query, d)`` of a meta-batch."""
        n_tasks, n_support = XS.shape[:2]
        x = torch.cat([XS, XQ], dim=1)
        z = embed(self.module_, x.flatten(0, 1)).view(n_tasks, x.shape[1], -1)
        return z[:, :n_support], z[:, n_support:]

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        XS, YS, XQ, YQ = self.unpack_tasks(batch)  # noqa: N806
        zs, zq = self.embed_tasks(XS, XQ)
        losses, accs = prototypical_loss(zs, YS, zq, YQ)
        loss = losses.mean()
        self.check_finite(loss, "Lower meta_lr.")
        loss.backward()
        self.record(task_loss=loss.item(), query_acc=accs.mean().item())
        self.n_iter_ += 1
        return {"loss": loss.detach(), "y_pred": None}

    def validation_step(self, batch, **fit_params):
        self._set_training(False)
        XS, YS, XQ, YQ = self.unpack_tasks(batch)  # noqa: N806
        with torch.no_grad():
            zs, zq = self.embed_tasks(XS, XQ)
            losses, accs = prototypical_loss(zs, YS, zq, YQ)
        self.record(valid_acc=accs.mean().item())
        return {"loss": losses.mean(), "y_pred": None}


class ProtoNetClassifier(MetaNetAttributes, BaseMetaLearner):
    """Prototypical Networks (Snell et al. 2017) for few-shot classification of rare diseases.

    ``fit`` meta-trains an embedding network (the backbone without its head) on
    ``n_way``-way ``n_shot``-shot tasks sampled from the classes of ``y`` (the
    common diseases): the prototype of a class is the mean embedding of its
    support images, the logits of a query image are its negative squared
    Euclidean distances to the prototypes, and the loss is their cross-entropy on
    the query set, averaged over the ``meta_batch_size`` tasks of a meta-update
    (Adam). ``adapt`` stores the prototypes of a new task's support set (no
    gradient step, any number of classes); ``predict_proba`` is the softmax of the
    negative squared distances; ``score`` is the mean AUC over episodes of the
    classes it is given.

    Parameters
    ----------
    module : {"conv4", "resnet", "vgg"} or nn.Module class or instance, default="conv4"
        Backbone, built without a head: the embedding is its flattened (Conv4) or
        pooled (ResNet) feature map. Conv4 is the paper's embedding network (4 x
        [3x3 conv with ``n_filters``, BatchNorm, ReLU, 2x2 max-pool]).
    n_filters : int, default=64
        Width of the backbone.
    n_way : int, default=2
        Classes per meta-training task and per ``score`` episode (DAML's tasks
        are binary). ``adapt`` accepts any number of classes.
    n_shot : int, default=5
        Support images per class when meta-training and scoring (Snell et al.
        train with the test-time shot).
    n_query : int, default=15
        Query images per class.
    meta_batch_size : int, default=4
        Tasks per update.
    n_iterations : int, default=3000
        Updates (meta-batches).
    meta_lr : float, default=1e-3
        Adam learning rate (the paper's).
    lr_decay_step : int or None, default=2000
        Halve the learning rate every ``lr_decay_step`` iterations (Snell et al.
        halve it every 2000 episodes); ``None`` keeps it constant.
    augment : bool or Augment, default=True
        Random scaling with crop, rotation and flips of every task image while
        meta-training.
    n_score_tasks : int, default=100
        Episodes drawn by ``score``.
    n_jobs : int or None, default=None
        Workers of ``score`` / ``episode_scores``' evaluation episodes, on the
        active ``joblib.parallel_config`` backend (``None``: 1, ``-1``: every core;
        0 or a float raise ``InvalidParameterError``, a ``ValueError``); the scores
        equal the serial ones. Meta-training does not use it: it scales with
        ``torchrun`` (:mod:`fewmed.distributed`).
    iterations_per_epoch : int, default=100
        Updates per skorch "epoch": one row of ``meta_net_.history`` and one
        chance for epoch callbacks (``EarlyStopping``, ``Checkpoint``) to act.
    n_valid_tasks : int, default=50
        Fixed validation tasks drawn from ``fit``'s ``X_valid, y_valid``.
    callbacks : list of skorch callbacks or (name, callback) tuples, default=None
        Added to the net's own (an :class:`~fewmed.fewshot._meta_net.IterationSchedule`
        for ``lr_decay_step``, ``PrintLog`` and a ``ProgressBar`` when ``verbose``).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the task sampler and the augmentation.
    verbose : int, default=1
        skorch's progress bar and per-epoch table while meta-training when > 0.

    Attributes
    ----------
    meta_net_ : ProtoNet
        The skorch net that meta-trains (``history`` has a row per epoch and the
        per-iteration values in the rows' ``batches``).
    module_ : nn.Module
        The embedding network, ``meta_net_.module_``.
    history_ : list of dict
        Per iteration: ``train_loss`` and ``task_loss`` (mean query
        cross-entropy), ``query_acc`` and ``lr``.
    n_iter_ : int
        Updates done.
    train_classes_ : ndarray
        Classes meta-trained on.
    input_shape_ : tuple
        ``(C, H, W)`` of the training images.
    classes_ : ndarray
        Labels of the task last given to ``adapt`` (absent before).
    prototypes_ : Tensor of shape (n_classes, d)
        Mean support embedding of each class of ``classes_`` (absent before ``adapt``).

    See Also
    --------
    fewmed.DAMLClassifier : MAML with a difficulty-aware meta-loss.

    Notes
    -----
    BatchNorm is ordinary BatchNorm with running statistics. While
    meta-training it is in training mode (a meta-batch is normalised with its own
    statistics, which also update the running averages); ``adapt``,
    ``predict_proba`` and ``score`` run it in evaluation mode, with the running
    statistics of the common classes. The embedding of an image is then a fixed
    function of that image: prototypes are computed once per task, a prediction
    does not depend on the other images it is batched with, and nothing is
    normalised with the test images' statistics (no transduction). DAML's
    reference BatchNorm (normalising with the support set's statistics) is not
    used because ProtoNet has no inner loop that needs per-task statistics, and a
    1-shot 2-way support set of two images cannot estimate them.

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> data = make_synthetic_lesions(n_classes=6, n_per_class=30, size=16, random_state=0)
    >>> common = data.target < 4
    >>> clf = ProtoNetClassifier(n_filters=8, n_iterations=4, n_query=5, verbose=0,
    ...                          random_state=0)
    >>> clf = clf.fit(data.images[common], data.target[common])
    >>> rare = ~common
    >>> clf = clf.adapt(data.images[rare][::6], data.target[rare][::6])
    >>> clf.prototypes_.shape
    torch.Size([2, 8])
    >>> clf.predict_proba(data.images[rare][:3]).shape
    (3, 2)
    """

    _parameter_constraints: dict = {
        **META_CONSTRAINTS,
        "meta_lr": [Interval(Real, 0, None, closed="neither")],
        "lr_decay_step": [Interval(Integral, 1, None, closed="left"), None],
    }

    _adapted_attrs = ("classes_", "prototypes_")

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
        augment=True,
        n_score_tasks=100,
        n_jobs=None,
        iterations_per_epoch=100,
        n_valid_tasks=50,
        callbacks=None,
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
        self.augment = augment
        self.n_score_tasks = n_score_tasks
        self.n_jobs = n_jobs
        self.iterations_per_epoch = iterations_per_epoch
        self.n_valid_tasks = n_valid_tasks
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- fit
    _net_class = ProtoNet

    def _backbone_kwargs(self) -> dict:
        return {"n_classes": None}  # an embedding: no head

    def _lr_schedule(self) -> tuple[str, IterationSchedule]:
        return ("lr_schedule", IterationSchedule(step_decay(self.lr_decay_step, 0.5)))

    def _train_n_query(self) -> int:
        n_query = self.task_shape_[2]
        if n_query < 1:
            raise ValueError(
                f"ProtoNetClassifier meta-trains on query images: n_query must be >= 1, got "
                f"{n_query}."
            )
        return n_query

    # --------------------------------------------------------------- adapt
    def _embed(self, X: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        module = self.module_.eval()  # BatchNorm with its running statistics
        device = next(module.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                out.append(embed(module, X[i : i + batch_size].to(device)))
        return torch.cat(out)

    def _adapt(self, Xs: torch.Tensor, ys: torch.Tensor) -> None:
        z = self._embed(Xs)
        self.prototypes_ = prototypes(z, ys.to(z.device), len(self.classes_))

    def _predict_logits(self, X: torch.Tensor) -> np.ndarray:
        check_is_fitted(self, "prototypes_")
        return (-squared_distances(self._embed(X), self.prototypes_)).cpu().numpy()
