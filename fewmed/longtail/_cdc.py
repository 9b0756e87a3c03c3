"""CDCClassifier: auxiliary decoder and twin classifier for imbalanced diagnosis.

Xu et al., *Auxiliary Decoder and Classifier for Imbalanced Skin Disease
Diagnosis* (2021). A CNN classifier (feature extractor + head), a decoder that
reconstructs the input from the extractor's feature map, and the *same*
classifier applied again to the reconstruction (the "twin"), trained jointly on

    L = Lc + alpha * Lr + beta * Lt,

where ``Lc`` and ``Lt`` are the same classification loss (CE, class-weighted CE,
focal or class-weighted focal) on the input and on its reconstruction, and
``Lr = sum_k w_k L_k`` is an L2 / L1 reconstruction loss weighted per class,
larger for smaller classes. At prediction time only the classifier runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.utils import to_tensor
from torch import nn

from fewmed.longtail._base import CLASS_WEIGHT_CONSTRAINT, LongTailClassifier
from fewmed.losses import ReconstructionLoss
from fewmed.nn import make_decoder

__all__ = ["CDCClassifier", "psnr"]

_TERMS = ("train_loss_cls", "train_loss_rec", "train_psnr", "train_loss_twin")

#: Keep the networks and batches in channels-last memory layout on the CPU: oneDNN's
#: convolutions, pooling and upsampling are ~1.5-2x faster on it for small images.
_CHANNELS_LAST_ON_CPU = True


def psnr(recon: torch.Tensor, target: torch.Tensor, unit_range: bool = True) -> float:
    """Peak signal-to-noise ratio (dB) of a reconstruction: ``10 log10(peak**2 / MSE)``.

    ``peak`` is 1 for images in ``[0, 1]``, else the target's range. A constant
    reconstruction of an image of pixel variance ``v`` (in ``[0, 1]``) scores at
    best ``-10 log10(v)``: about 12 dB for ``v = 0.06``.

    Examples
    --------
    >>> import torch
    >>> round(psnr(torch.full((1, 1, 2, 2), 0.1), torch.zeros(1, 1, 2, 2)), 6)
    20.0
    """
    mse = float(torch.mean((recon.float() - target.float()) ** 2))
    peak = 1.0 if unit_range else float(target.max() - target.min()) or 1.0
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak**2 / mse))


@contextmanager
def _frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave running stats alone.

    Used for the twin pass: the classifier sees reconstructions in training mode,
    but its running mean / variance (used at prediction time on real images) are
    estimated on real images only.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


class CDCClassifier(LongTailClassifier):
    """Classifier + auxiliary decoder + twin classifier (CDC, Xu et al. 2021).

    A skorch :class:`~skorch.NeuralNetClassifier` customised through its hooks
    (``initialize_module`` builds the backbone ``module_`` and the decoder
    ``decoder_``; ``infer`` runs the three branches; ``get_loss`` combines them).
    The parameters shared with RSKD (``module``, ``n_filters``, ``loss``,
    ``gamma``, ``class_weight`` and skorch's) are declared by
    :class:`fewmed.longtail._base.LongTailClassifier`.
    ``decoder=False`` is the plain baseline (CE / WCE / FL / WFL depending on
    ``loss`` and ``class_weight``), ``twin=False`` the paper's "CD" ablation.

    Parameters
    ----------
    module : {"conv4", "resnet", "resnet18", "vgg"}, nn.Module class or instance, default="conv4"
        The classifier backbone. It must follow the fewmed backbone protocol
        (``forward_features``, ``forward_head``, ``feature_shape``,
        ``input_shape``) when ``decoder=True``; any module with logits output
        works with ``decoder=False``. Further arguments: ``module__<name>``.
    n_filters : int or None, default=None
        Width of the default backbones (``None`` keeps the backbone's default:
        64 for Conv4, 32 for ResNet).
    alpha : float, default=10.0
        Weight of the reconstruction loss ``Lr``.
    beta : float, default=0.2
        Weight of the twin classifier's loss ``Lt``.
    loss : {"ce", "focal"}, default="ce"
        Type of ``Lc`` and ``Lt``: cross-entropy or focal loss.
    gamma : float, default=2.0
        Focal loss focusing parameter (``loss="focal"`` only).
    class_weight : {"balanced", "inverse", "sqrt_inverse"}, dict, array or None, \
default=None
        Class weights of ``Lc`` and ``Lt`` (``"balanced"`` gives WCE / WFL);
        see :func:`fewmed.losses.class_weights`.
    reconstruction : {"l2", "l1"}, default="l2"
        Pixel loss of the decoder.
    reconstruction_weight : {"balanced", "inverse", "sqrt_inverse"}, dict, array or \
None, default="balanced"
        Per-class weights ``w_k`` of ``Lr``; ``None`` weighs every image equally.
    twin : bool, default=True
        Apply the classifier (same parameters) to the reconstruction. ``False`` is CD.
    decoder : bool, default=True
        ``False`` trains the plain classifier (no decoder, no twin).
    decoder_blocks : int, default=2
        (Up-sampling + convolution) blocks of the decoder.
    decoder_filters : int or None, default=None
        Width of the decoder's blocks; ``None`` halves the feature map's channels
        at every block (at least 8). A smaller width makes the decoder cheaper.
    decoder_scale : float in (0, 1], default=1.0
        Resolution of the decoder's blocks relative to the image; below 1 the
        reconstruction is upsampled (bilinear, no parameters) to full size at the
        end. ``0.5`` removes the full-resolution convolutions, most of the
        decoder's cost.
    decoder_kind : {"upsample", "deconv"}, default="upsample"
        The decoder's blocks: bilinear upsampling + 3x3 convolution, or the
        paper's transposed convolution (:class:`fewmed.nn.Decoder`); both
        Kaiming-initialised. The decoder reads the backbone's feature map
        (``forward_features``): give it a spatial one (e.g. ``module="resnet"``,
        4x4 at 28 px, or ``module="conv4", module__n_pools=2``, 7x7), a 1x1 map
        (Conv4 at 28 px) leaves it nothing to reconstruct from.
    lr_schedule : {"cosine", "step"} or None, default=None
        ``"step"`` with ``optimizer=torch.optim.SGD, optimizer__momentum=0.9,
        lr=1e-3`` is the paper's schedule (the rate divided by 10 at half of
        ``max_epochs``: epoch 100 of 200).
    augment : bool, dict or Augment, default=False
        Random scaling, rotation and flips of training batches
        (:class:`fewmed.nn.Augment`); the reconstruction target is the augmented
        image.
    optimizer : torch optimizer class, default=torch.optim.Adam
    lr : float, default=1e-3
    max_epochs : int, default=20
    batch_size : int, default=64
    train_split : callable or None, default=None
        No hold-out by default (skorch's default would take 20% of every class);
        pass ``fewmed.model_selection.stratified_split(0.1)`` to monitor ``valid_loss``,
        ``valid_acc`` and ``valid_f1``.
    predict_nonlinearity : callable, default=softmax
        Maps the logits to ``predict_proba``'s probabilities (skorch's ``"auto"``
        would return logits for a focal loss).
    random_state : int, RandomState or None, default=None
        Seeds the initialisation, the shuffling and the augmentation (without
        touching torch's global RNG).
    device : {"cpu", "cuda", "auto"}, default="cpu"
    verbose : int, default=0
        1 prints skorch's per-epoch table.
    **kwargs
        Further skorch parameters (``callbacks``, ``optimizer__weight_decay``,
        ``iterator_train__num_workers``, ``module__<param>``, ...).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Labels seen in ``fit``, sorted; the columns of ``predict_proba``.
    module_ : nn.Module
        The trained backbone (the classifier and its twin: the same object).
    decoder_ : nn.Module
        The decoder (only when ``decoder=True``).
    criterion_ : nn.Module
        The classification loss of ``Lc`` and ``Lt``.
    reconstruction_criterion_ : ReconstructionLoss
        ``Lr`` with its class weights (only when ``decoder=True``).
    input_shape_ : tuple of int
        ``(C, H, W)`` of the training images.
    n_features_in_ : int
        ``C * H * W``.
    history_ : skorch.History
        Per epoch: ``train_loss`` (``L``), ``train_loss_cls`` (``Lc``),
        ``train_loss_rec`` (``Lr``), ``train_psnr`` (the reconstruction's PSNR in
        dB, the mean over the epoch's batches, see :func:`psnr`),
        ``train_loss_twin`` (``Lt``), ``dur``; per batch ``lr`` with an
        ``lr_schedule``.

    Notes
    -----
    During the twin pass the backbone's BatchNorm layers use the reconstructions'
    batch statistics but do not update their running statistics, so prediction
    on real images is normalised with statistics of real images.

    Examples
    --------
    >>> import numpy as np
    >>> from fewmed import CDCClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    >>> y = np.array(["nv"] * 30 + ["df"] * 10)
    >>> clf = CDCClassifier(n_filters=8, max_epochs=2, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> clf.classes_.tolist()
    ['df', 'nv']
    >>> [k for k in ("train_loss_cls", "train_loss_rec", "train_loss_twin") if k in clf.history[-1]]
    ['train_loss_cls', 'train_loss_rec', 'train_loss_twin']
    """

    def __init__(
        self,
        module: Any = "conv4",
        *,
        alpha: float = 10.0,
        beta: float = 0.2,
        reconstruction: str = "l2",
        reconstruction_weight: Any = "balanced",
        twin: bool = True,
        decoder: bool = True,
        decoder_blocks: int = 2,
        decoder_filters: int | None = None,
        decoder_scale: float = 1.0,
        decoder_kind: str = "upsample",
        **kwargs: Any,
    ) -> None:
        super().__init__(module, **kwargs)
        self.alpha = alpha
        self.beta = beta
        self.reconstruction = reconstruction
        self.reconstruction_weight = reconstruction_weight
        self.twin = twin
        self.decoder = decoder
        self.decoder_blocks = decoder_blocks
        self.decoder_filters = decoder_filters
        self.decoder_scale = decoder_scale
        self.decoder_kind = decoder_kind

    # ------------------------------------------------------------------ params
    _parameter_constraints: dict = {
        **LongTailClassifier._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "reconstruction": [StrOptions({"l2", "l1"})],
        "reconstruction_weight": CLASS_WEIGHT_CONSTRAINT,
        "twin": ["boolean"],
        "decoder": ["boolean"],
        "decoder_blocks": [Interval(Integral, 1, None, closed="left")],
        "decoder_filters": [Interval(Integral, 1, None, closed="left"), None],
        "decoder_scale": [Interval(Real, 0, 1, closed="right")],
        "decoder_kind": [StrOptions({"upsample", "deconv"})],
    }

    def _loss_terms(self) -> tuple[str, ...]:
        if not isinstance(self.decoder, bool | np.bool_) or not self.decoder:
            return _TERMS[:1]
        return _TERMS if self.twin is not False else _TERMS[:3]

    # ------------------------------------------------------------------ building
    def _build_modules(self, info: dict) -> None:
        """The backbone ``module_`` and, with ``decoder=True``, the decoder ``decoder_``."""
        super()._build_modules(info)
        if self.decoder:
            self.decoder_ = make_decoder(
                self.module_,
                n_blocks=self.decoder_blocks,
                n_filters=self.decoder_filters,
                scale=self.decoder_scale,
                kind=self.decoder_kind,
                output="sigmoid" if info["in_unit_range"] else None,
            )
        elif "decoder_" in self.__dict__:
            del self.decoder_

    def _build_criteria(self, info: dict | None) -> None:
        """``criterion_`` (``Lc``, ``Lt``) and ``reconstruction_criterion_`` (``Lr``)."""
        super()._build_criteria(info)
        if self.decoder:
            self.reconstruction_criterion_ = ReconstructionLoss(
                self.reconstruction, weight=self._class_weights(self.reconstruction_weight, info)
            )

    def _wants_channels_last(self) -> bool:
        return _CHANNELS_LAST_ON_CPU

    # ------------------------------------------------------------------ forward / loss
    def infer(self, x: Any, **fit_params: Any):
        """Logits at evaluation; ``(logits, reconstruction, twin_logits)`` in training.

        Parameters
        ----------
        x : Tensor of shape (n, C, H, W)
        **fit_params
            Passed to the backbone at evaluation.

        Returns
        -------
        Tensor or tuple of (Tensor, Tensor, Tensor or None)
        """
        x = self._as_input(x)
        if not (self.decoder and self.module_.training):
            return self.module_(x, **fit_params)
        fmap = self.module_.forward_features(x)
        logits = self.module_.forward_head(fmap)
        recon = self.decoder_(fmap)
        twin_logits = None
        if self.twin:
            with _frozen_bn_statistics(self.module_):
                twin_logits = self.module_(recon)  # the same module: shared parameters
        return logits, recon, twin_logits

    def get_loss(self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False):
        """``L = Lc + alpha * Lr + beta * Lt`` (only ``Lc`` for logits alone).

        The unweighted terms of the last training batch are kept in
        ``last_terms_`` and recorded per batch in the history.

        Parameters
        ----------
        y_pred : Tensor or tuple
            Output of :meth:`infer`.
        y_true : Tensor of shape (n,)
            Class codes.
        X : Tensor of shape (n, C, H, W), default=None
            The (augmented) input batch: the reconstruction target.
        training : bool, default=False

        Returns
        -------
        Tensor
        """
        y_true = to_tensor(y_true, device=self.device).long()
        if not isinstance(y_pred, tuple):
            loss_c = self.criterion_(y_pred, y_true)
            if training:
                self.last_terms_ = {"train_loss_cls": loss_c.item()}
            return loss_c
        logits, recon, twin_logits = y_pred
        loss_c = self.criterion_(logits, y_true)
        target = to_tensor(X, device=self.device)
        loss_r = self.reconstruction_criterion_(recon, target, y_true)
        total = loss_c + self.alpha * loss_r
        terms = {
            "train_loss_cls": loss_c.item(),
            "train_loss_rec": loss_r.item(),
            "train_psnr": psnr(recon.detach(), target, self.data_info_["in_unit_range"]),
        }
        if twin_logits is not None:
            loss_t = self.criterion_(twin_logits, y_true)
            total = total + self.beta * loss_t
            terms["train_loss_twin"] = loss_t.item()
        if training:
            self.last_terms_ = terms
        return total

    def reconstruct(self, X: Any) -> np.ndarray:
        """Decoder output for images ``X`` (float ``(n, C, H, W)``), in evaluation mode.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n, C, H, W)
        """
        self.check_is_fitted()
        if not self.decoder:
            raise ValueError("reconstruct needs decoder=True.")
        out = []
        self._set_training(False)
        with torch.no_grad():
            for batch in self.get_iterator(self.get_dataset(X), training=False):
                xi, _ = batch
                xi = to_tensor(xi, device=self.device)
                out.append(self.decoder_(self.module_.forward_features(xi)).cpu().numpy())
        return np.concatenate(out)
