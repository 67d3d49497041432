"""Float64 neighborhood-attention oracle, written literally from the window rules of
:func:`nat_mm.ops.na2d` (docs/design.md section 3).

Independent of nat_mm.ops (its window maths is plain Python per position, and nothing of
nat_mm is imported), so testing any backend, the pure-PyTorch fallback included, against it is
not circular. Torch only: tools/gpu uses it on a machine without OpenMMLab.

Example:
    >>> import torch

__all__ = ['TOL', 'axis_windows', 'reference_logits', 'reference_av', 'reference_na2d']
    >>> q, k, v = torch.randn(3, 1, 9, 10, 2, 8).unbind(0)
    >>> reference_na2d(q, k, v, (3, 3), (2, 1)).shape
    torch.Size([1, 9, 10, 2, 8])
"""
import math

import torch

# Tolerances against the oracle, per input dtype, shared by every backend's tests.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}


def axis_windows(length, kernel, dilation):
    """For each query position on one axis: its k key positions and their rpb indices.

    Returns:
        tuple[Tensor, Tensor]: ``[L, k]`` int64 key positions, ``[L, k]`` rpb indices.
    """
    r = kernel // 2
    keys, rpb = [], []
    for i in range(length):
        c = i % dilation
        n_c = math.ceil((length - c) / dilation)
        p = i // dilation
        s = min(max(p - r, 0), n_c - kernel)
        row = [(s + t) * dilation + c for t in range(kernel)]
        keys.append(row)
        rpb.append([(j - i) // dilation + (kernel - 1) for j in row])
    return torch.tensor(keys), torch.tensor(rpb)


def reference_logits(q, k, kernel_size, dilation, rpb=None):
    """``[B, H, W, heads, kh*kw]`` float64 logits q.k + rpb."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    B, H, W, heads, D = q.shape
    rows, rpb_rows = axis_windows(H, kh, dh)
    cols, rpb_cols = axis_windows(W, kw, dw)
    q, k = q.double(), k.double()
    # k_win[b, y, x, ki, kj, n, :] = k[b, rows[y, ki], cols[x, kj], n, :]
    k_win = k[:, rows[:, None, :, None], cols[None, :, None, :]]
    logits = torch.einsum('byxnd,byxijnd->byxnij', q, k_win)
    if rpb is not None:
        bias = rpb.double()[:, rpb_rows[:, None, :, None], rpb_cols[None, :, None, :]]
        logits = logits + bias.permute(1, 2, 0, 3, 4)
    return logits.reshape(B, H, W, heads, kh * kw)


def reference_av(attn, v, kernel_size, dilation):
    """``[B, H, W, heads, D]`` float64 weighted sum of each query's neighbourhood of values."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    B, H, W, heads, D = v.shape
    rows, _ = axis_windows(H, kh, dh)
    cols, _ = axis_windows(W, kw, dw)
    v_win = v.double()[:, rows[:, None, :, None], cols[None, :, None, :]]
    attn = attn.double().reshape(B, H, W, heads, kh, kw)
    return torch.einsum('byxnij,byxijnd->byxnd', attn, v_win)


def reference_na2d(q, k, v, kernel_size, dilation, rpb=None, scale=None):
    """``[B, H, W, heads, D]`` float64 softmax neighborhood attention; ``kernel_size`` and
    ``dilation`` are ``(h, w)`` pairs, ``scale`` defaults to ``D ** -0.5``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = reference_logits(q.double() * scale, k, kernel_size, dilation, rpb)
    return reference_av(logits.softmax(-1), v, kernel_size, dilation)
