"""Pure-PyTorch neighborhood attention: gather the k*k window with index tensors, then einsum.

Readable and differentiable through autograd, used when the compiled kernels are missing (and as
the plain-gather peer in benchmarks). It copies K and V kh*kw times, so it is slow and memory hungry
on large maps; the compiled kernels in csrc/ are not.
"""
from typing import Optional, Tuple

import torch


def window_indices(length: int, kernel: int, dilation: int,
                   device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key positions ``[L, k]`` of every query on one axis and their rpb indices ``[L, k]``.

    Row i holds the positions of the k keys of query i (docs/design.md section 3): residue group
    ``i % d``, window start clamped so the window stays inside the group.
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    group_len = torch.div(length - group + dilation - 1, dilation, rounding_mode='floor')
    start = (torch.div(pos, dilation, rounding_mode='floor') - kernel // 2)
    start = torch.minimum(start.clamp(min=0), group_len - kernel)
    keys = (start[:, None] + torch.arange(kernel, device=device)) * dilation + group[:, None]
    rpb_idx = torch.div(keys - pos[:, None], dilation, rounding_mode='floor') + kernel - 1
    return keys, rpb_idx


def inverse_window_bounds(length: int, kernel: int, dilation: int,
                          device: Optional[torch.device] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The inverse neighbourhood of every key on one axis, derived from :func:`window_indices`.

    Returns:
        tuple[Tensor, Tensor]: ``first [L]`` and ``stop [L]`` int64: the queries whose window
        holds key ``j`` are ``range(first[j], stop[j], dilation)`` (``stop`` is one past the
        last of them).
    """
    keys, _ = window_indices(length, kernel, dilation, device)
    queries = torch.arange(length, device=device)[:, None].expand_as(keys).flatten()
    first = torch.full((length,), length, dtype=torch.long, device=device)
    last = torch.full((length,), -1, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, keys.flatten(), queries, 'amin')
    last = last.scatter_reduce(0, keys.flatten(), queries, 'amax')
    return first, last + 1


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x [B, H, W, heads, D] -> [B, H, W, kh*kw, heads, D]``: each query's window of keys.

    One gather over the flattened map (index ``row * W + col``), so the result is contiguous.
    """
    flat_index = (rows[:, None, :, None] * x.shape[2] + cols[None, :, None, :]).flatten(2)
    return x.flatten(1, 2)[:, flat_index]


# The einsums run over the flattened map (P = H * W) and the result is unflattened after: with
# symbolic H and W (torch.export with dynamic shapes), an einsum over separate H and W axes makes
# its internal reshapes guard on divisibility facts about ceil-divided sizes that the symbolic
# shape engine cannot prove, and the export fails; over P there are none.
def na2d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: Tuple[int, int],
            dilation: Tuple[int, int], rpb: Optional[torch.Tensor]) -> torch.Tensor:
    """``[B, H, W, heads, kh*kw]`` logits q.k (+ rpb), no scale."""
    _, H, W, heads, _ = query.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    rows, rpb_rows = window_indices(H, kh, dh, query.device)
    cols, rpb_cols = window_indices(W, kw, dw, query.device)
    k_win = _gather(key, rows, cols)
    attn = torch.einsum('bpnd,bpknd->bpnk', query.flatten(1, 2), k_win.flatten(1, 2))
    attn = attn.unflatten(1, (H, W))
    if rpb is not None:
        # bias [heads, H, W, kh*kw] -> [H, W, heads, kh*kw]
        bias = rpb[:, rpb_rows[:, None, :, None], rpb_cols[None, :, None, :]].flatten(3)
        attn = attn + bias.permute(1, 2, 0, 3)
    return attn


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: Tuple[int, int],
            dilation: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, heads, D]`` weighted sum of each query's neighbourhood of values."""
    _, H, W, _, _ = value.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    rows, _ = window_indices(H, kh, dh, value.device)
    cols, _ = window_indices(W, kw, dw, value.device)
    v_win = _gather(value, rows, cols)
    out = torch.einsum('bpnk,bpknd->bpnd', attn.flatten(1, 2), v_win.flatten(1, 2))
    return out.unflatten(1, (H, W))


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         kernel_size: Tuple[int, int], dilation: Tuple[int, int], rpb: Optional[torch.Tensor],
         scale: float) -> torch.Tensor:
    """Softmax neighborhood attention, computed as qk -> softmax -> av."""
    attn = na2d_qk(query * scale, key, kernel_size, dilation, rpb)
    return na2d_av(attn.softmax(dim=-1), value, kernel_size, dilation)
