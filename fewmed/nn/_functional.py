"""Faster versions of two layers' autograd, with the same values and derivatives.

Second-order meta-learning (MAML, DAML) back-propagates through the inner
loop's backward passes, so the *double* backward of every layer counts. Two
layers of the Conv4 backbone had slow paths on CPU:

``batch_norm_train``
    BatchNorm with batch statistics. The forward and the first backward are
    torch's fused kernels; the double backward (torch composes it from about 40
    full-size operations) is written here in closed form as 8 passes over the
    tensors plus 3 reductions: about 2.5x less time for that part of a
    meta-iteration. The derivation is in :func:`_BatchNormBackward.backward`.
``max_pool2d_gather``
    torch's max-pooling of a contiguous (NCHW) batch on CPU is about ten times
    slower than its channels-last kernel. The argmax indices are found with the
    channels-last kernel outside autograd and the output is
    ``x.flatten(2).gather(2, indices)``: the same values, the same indices (ties
    included) and hence the same first and second derivatives, 2.5x faster
    for forward, backward and double backward together.

Both fall back to torch's own operations off the CPU and inside ``torch.func``
transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["batch_norm_train", "max_pool2d_gather"]


def _transformed() -> bool:
    """True inside torch.func transforms (vmap, grad, ...), where only torch's ops go."""
    return torch._C._are_functorch_transforms_active()


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps)
        return gx, gw, gb, None


class _BatchNormBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, x, weight, mean, invstd, eps):
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(gy, x, weight, mean, invstd, gw, gb)
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        """Derivatives of the BatchNorm backward ``(gy, x, w) -> (gx, gw, gb)``.

        Per channel, with ``n`` values, ``r = 1 / sqrt(var + eps)``,
        ``xh = (x - mean) r`` and ``P(v) = v - mean(v) - xh mean(v xh)``, the
        backward is ``gb = sum(gy)``, ``gw = sum(gy xh)``, ``gx = w r P(gy)``.
        ``P`` is self-adjoint, so with incoming gradients ``(ggx, ggw, ggb)``:

        * ``d gy = w r P(ggx) + ggw xh + ggb``;
        * ``d w = r s`` with ``s = sum(ggx P(gy))``;
        * ``d x``: ``xh`` receives ``d xh = ggw gy - w r (ggx mean(gy xh) +
          gy mean(ggx xh))`` and ``r`` receives ``w s``; through ``xh`` that is
          ``r P(d xh)`` and through ``r`` (``dr/dx = -r^2 xh / n``) it is
          ``-w s r^2 xh / n``.

        Every term is a per-channel coefficient times ``ggx``, ``gy``, ``xh`` or
        1, and every mean of ``d xh`` follows from means already taken, so the
        whole is three ``addcmul`` chains. Not differentiable again: third
        derivatives (not needed by second-order meta-learning) raise.
        """
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fewmed.nn.batch_norm_train has first and second derivatives only; a third "
                "derivative (create_graph=True through a second derivative) is not supported. "
                "Use torch.nn.functional.batch_norm for that."
            )
        gy, x, weight, mean, invstd, gw, gb = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = (0, *range(2, x.dim()))
        r = invstd.view(shape)
        wr = weight.view(shape) * r
        xh = torch.addcmul((-mean * invstd).view(shape), x, r)
        ggw, ggb = ggw.view(shape), ggb.view(shape)  # materialised: zeros when unused
        m_gy, m_gyxh = gb.view(shape) / n, gw.view(shape) / n
        m_ggx = ggx.mean(dims, keepdim=True)
        m_ggxxh = (ggx * xh).mean(dims, keepdim=True)
        s = (ggx * gy).sum(dims, keepdim=True) - n * (m_gy * m_ggx + m_gyxh * m_ggxxh)
        d_gy = torch.addcmul(torch.addcmul(ggb - wr * m_ggx, xh, ggw - wr * m_ggxxh), ggx, wr)
        # d xh = a ggx + b gy, so its means are combinations of the means above
        a, b = -wr * m_gyxh, ggw - wr * m_ggxxh
        mean_d = a * m_ggx + b * m_gy
        mean_dxh = a * m_ggxxh + b * m_gyxh
        c_xh = -r * mean_dxh - weight.view(shape) * s * r * r / n
        d_x = torch.addcmul(torch.addcmul(-r * mean_d, xh, c_xh), ggx, r * a)
        d_x = torch.addcmul(d_x, gy, r * b)
        return d_gy, d_x, (r * s).view(-1), None, None, None


def batch_norm_train(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """BatchNorm with the batch's own statistics and a fast closed-form double backward.

    Equal to ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``
    in value and in first and second derivatives (to float rounding); asking for
    a third derivative raises ``RuntimeError``. On other devices than the CPU
    (where it has not been measured) and inside ``torch.func`` transforms it is
    that call.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, ...)
        Input batch; each channel is normalised with its mean and biased
        variance over the batch and the remaining dimensions.
    weight : torch.Tensor of shape (C,)
        Per-channel scale (gamma).
    bias : torch.Tensor of shape (C,)
        Per-channel shift (beta).
    eps : float, default=1e-5
        Added to the variance before the square root.

    Returns
    -------
    torch.Tensor of the shape of ``x``
        ``weight * (x - mean) / sqrt(var + eps) + bias`` per channel. No running
        statistics are kept.

    Raises
    ------
    RuntimeError
        When a third derivative is taken (a backward with ``create_graph=True``
        through the second derivative), on the CPU path.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(8, 3, 5, 5)
    >>> w, b = torch.ones(3), torch.zeros(3)
    >>> ref = torch.nn.functional.batch_norm(x, None, None, w, b, True)
    >>> torch.allclose(batch_norm_train(x, w, b), ref)
    True
    """
    if x.device.type != "cpu" or _transformed():  # measured on CPU only
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _BatchNorm.apply(x, weight, bias, eps)


def max_pool2d_gather(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride)``, faster on CPU, with identical derivatives.

    For contiguous (NCHW) CPU tensors; anything else (channels-last, other devices,
    ``torch.func`` transforms) goes to ``F.max_pool2d`` itself.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W)
        Input batch.
    kernel_size : int or (int, int)
        Size of the pooling window.
    stride : int or (int, int), default=None
        Step of the window; ``None`` is ``kernel_size`` (as in ``F.max_pool2d``).

    Returns
    -------
    torch.Tensor of shape (N, C, H_out, W_out)
        The window maxima, ``H_out = (H - kernel_h) // stride_h + 1`` (likewise
        ``W_out``), equal to ``F.max_pool2d(x, kernel_size, stride)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(2, 3, 7, 7)
    >>> torch.equal(max_pool2d_gather(x, 2), torch.nn.functional.max_pool2d(x, 2))
    True
    """
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous() or _transformed():
        return F.max_pool2d(x, kernel_size, stride)  # channels-last input: torch is fast
    with torch.no_grad():
        fast = x.detach().contiguous(memory_format=torch.channels_last)
        _, idx = F.max_pool2d_with_indices(fast, kernel_size, stride)
        idx = idx.contiguous()
    n, c, h, w = idx.shape
    return x.flatten(2).gather(2, idx.flatten(2)).view(n, c, h, w)
