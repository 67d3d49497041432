"""Triton kernels of fused 2-D neighborhood attention (forward, dQ + drpb, dK/dV).

Imported only by ``nat_mm.ops._triton`` (lazily: CPU-only installs never need triton). Whether
these run compiled or in Triton's interpreter is decided when this module is imported
(``TRITON_INTERPRET=1`` then: the tests run them on the CPU that way).

Work decomposition (docs/design.md section 3, in group coordinates): with dilation ``(dh, dw)``
the map
splits into ``dh * dw`` residue groups ``(cy, cx)``; group ``(cy, cx)`` holds the positions
``(py * dh + cy, px * dw + cx)``, an ``ny x nx`` sub-map (``ny = ceil((H - cy) / dh)``) on which
dilated NA is plain NA with kernel ``(kh, kw)``: query ``p`` sees the group positions
``ws(p) .. ws(p) + k - 1`` with ``ws(p) = clamp(p - k // 2, 0, n - k)``, and the rpb index of a
pair is ``key - query + k - 1`` per axis.

- forward and dQ: a program owns a ``TY x TX`` tile of queries of one (batch, head, group) and
  walks the union of their windows (the halo, at most ``(TY + kh - 1) x (TX + kw - 1)``) in
  ``KR x KC`` chunks of keys: ``S = Q K^T`` and ``P V`` (or ``dO V^T``, ``dS K``) with ``tl.dot``
  (tensor cores for fp16/bf16, fp32 accumulation); keys outside a query's window are masked
  (wasted work, cheap on tensor cores); online softmax; the forward saves the logsumexp.
- dK/dV: a program owns a ``TY x TX`` tile of keys and walks the union of their inverse
  neighbourhoods (exactly the queries whose windows hold them) in ``KR x KC`` chunks of queries.
  Every output element is written by one program: no atomics, deterministic.
- drpb: each dQ program folds its ``dS`` into a ``[2kh-1, 2kw-1]`` table (padded to powers of
  two) with two one-hot matmuls and stores it in its own slot; the caller sums the slots in a
  fixed order.

Pointers: q/k/v/o/do/dq/dk/dv are ``[B, H, W, heads, D]`` with a unit last stride and arbitrary
other strides (q/k/v may be slices of one qkv projection); lse and delta are contiguous
``[B, H, W, heads]`` float32; rpb is a contiguous ``[heads, 2kh-1, 2kw-1]``.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): softmax in base 2 (exp2: the fast unit)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _window_start(p, n, K: tl.constexpr):
    """First group position of the window of group position ``p`` on an axis of ``n``."""
    return tl.minimum(tl.maximum(p - K // 2, 0), n - K)


@triton.jit
def _program_geometry(H, W, heads, DH: tl.constexpr, DW: tl.constexpr, TY: tl.constexpr,
                      TX: tl.constexpr):
    """(b, head, cy, cx, ny, nx, ty0, tx0) of this program; ty0 >= ny means: nothing to do.

    Grid: (tiles of the largest group, dh * dw groups, B * heads).
    """
    g = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // heads
    h = bh % heads
    cy = g // DW
    cx = g % DW
    ny = (H - cy + DH - 1) // DH
    nx = (W - cx + DW - 1) // DW
    tiles_x = tl.cdiv(tl.cdiv(W, DW), TX)
    tile = tl.program_id(0)
    ty0 = (tile // tiles_x) * TY
    tx0 = (tile % tiles_x) * TX
    # a tile of a shorter group (unequal groups: ny < ceil(H / dh)) may lie outside its group
    ty0 = tl.where(tx0 < nx, ty0, ny)
    return b, h, cy, cx, ny, nx, ty0, tx0


@triton.jit
def _tile_offsets(base, b, h, y, x, sb, sy, sx, sh):
    """Row pointers of ``[B, H, W, heads, D]`` positions ``(y, x)``; batch offset in int64."""
    return base + b.to(tl.int64) * sb + h.to(tl.int64) * sh + y * sy + x * sx


@triton.jit
def _load_rows(ptr, b, h, y, x, sb, sy, sx, sh, d, mask):
    """``[len(y), BD]``: the D-rows of positions ``(y, x)`` (zero where ``mask`` is not)."""
    rows = _tile_offsets(ptr, b, h, y, x, sb, sy, sx, sh)
    return tl.load(rows[:, None] + d[None, :], mask=mask, other=0.0)


@triton.jit
def _contiguous_rows(ptr, b, h, y, x, H, W, heads, D):
    """Row pointers of a contiguous ``[B, H, W, heads, D]`` tensor (do, dq, dk, dv)."""
    return _tile_offsets(ptr, b, h, y, x, H * W * heads * D, W * heads * D, heads * D, D)


@triton.jit
def _lse_index(b, h, y, x, H, W, heads):
    """Offsets into a contiguous ``[B, H, W, heads]`` tensor (lse, delta)."""
    return ((b.to(tl.int64) * H + y) * W + x) * heads + h


@triton.jit
def _tile(ty0, tx0, ny, nx, TY: tl.constexpr, TX: tl.constexpr):
    """Group positions ``(py, px)`` of a ``TY x TX`` tile, flattened row-major, and which lie in
    the group. Positions past the group's edge are clamped onto it: they compute as their
    clamped twins and are never stored."""
    i = tl.arange(0, TY * TX)
    py = ty0 + i // TX
    px = tx0 + i % TX
    valid = (py < ny) & (px < nx)
    return tl.minimum(py, ny - 1), tl.minimum(px, nx - 1), valid


@triton.jit
def _chunk(r0, c0, y1, x1, ny, nx, KR: tl.constexpr, KC: tl.constexpr):
    """The ``KR x KC`` chunk at ``(r0, c0)`` of a range that ends at ``(y1, x1)``: clamped group
    positions and which lie in the range."""
    j = tl.arange(0, KR * KC)
    y = r0 + j // KC
    x = c0 + j % KC
    valid = (y < y1) & (x < x1)
    return tl.minimum(y, ny - 1), tl.minimum(x, nx - 1), valid


@triton.jit
def _halo(t0, n, T: tl.constexpr, K: tl.constexpr):
    """``[lo, hi)`` on an axis: the union of the windows of tile positions ``t0 .. t0 + T - 1``
    (window starts only grow with the position)."""
    return _window_start(t0, n, K), _window_start(tl.minimum(t0 + T, n) - 1, n, K) + K


@triton.jit
def _inverse(t0, n, T: tl.constexpr, K: tl.constexpr):
    """``[lo, hi)`` on an axis: the queries whose windows hold a tile position ``t0 .. t0 + T -
    1`` (the inverse neighbourhood, docs/design.md section 3, in group coordinates)."""
    last = tl.minimum(t0 + T, n) - 1
    return tl.where(t0 < K, 0, t0 - K // 2), tl.where(last >= n - K, n, last + K // 2 + 1)


@triton.jit
def _pair_bins(c0, t0, TILE: tl.constexpr, CHUNK: tl.constexpr, K: tl.constexpr,
               TILE_IS_QUERY: tl.constexpr):
    """rpb bins on one axis of the (tile position t0 + n, chunk position c0 + m) pairs, flattened
    ``n * CHUNK + m``: ``key - query + K - 1``; the tile holds the queries or the keys."""
    i = tl.arange(0, TILE * CHUNK)
    offset = (c0 + i % CHUNK) - (t0 + i // CHUNK)
    if not TILE_IS_QUERY:
        offset = -offset
    return offset + (K - 1)


@triton.jit
def _to_block(x, TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """``[(ty, kr), (tx, kc)] -> [(ty, tx), (kr, kc)]``: pair layout to (tile, chunk) block."""
    return tl.reshape(tl.permute(tl.reshape(x, (TY, KR, TX, KC)), (0, 2, 1, 3)),
                      (TY * TX, KR * KC))


@triton.jit
def _to_pairs(x, TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """``[(ty, tx), (kr, kc)] -> [(ty, kr), (tx, kc)]``: the inverse of ``_to_block``."""
    return tl.reshape(tl.permute(tl.reshape(x, (TY, TX, KR, KC)), (0, 2, 1, 3)),
                      (TY * KR, TX * KC))


@triton.jit
def _rpb_bias(rpb_ptr, h, ty0, tx0, r0, c0, TY: tl.constexpr, TX: tl.constexpr,
              KR: tl.constexpr, KC: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
              RPB_W: tl.constexpr, TILE_IS_QUERY: tl.constexpr, PRECISION: tl.constexpr):
    """The rpb of every (tile, chunk) pair as a ``[TY * TX, KR * KC]`` float32 block.

    The bin is separable (row offset, column offset): gather the ``TY * KR`` rows of the table
    the row pairs need, then spread their columns over the column pairs with a one-hot matmul
    (exact: one nonzero product per entry), instead of a gather per pair. Bins outside the table
    (pairs outside every window) give 0.
    """
    rows = _pair_bins(r0, ty0, TY, KR, KH, TILE_IS_QUERY)
    cols = tl.arange(0, RPB_W)
    table = rpb_ptr + h * ((2 * KH - 1) * (2 * KW - 1))
    row_values = tl.load(table + rows[:, None] * (2 * KW - 1) + cols[None, :],
                         mask=((rows >= 0) & (rows < 2 * KH - 1))[:, None]
                         & (cols < 2 * KW - 1)[None, :], other=0.0)  # [(ty, kr), RPB_W]
    col_bins = _pair_bins(c0, tx0, TX, KC, KW, TILE_IS_QUERY)
    spread = (cols[:, None] == col_bins[None, :]).to(row_values.dtype)  # [RPB_W, (tx, kc)]
    pairs = tl.dot(row_values, spread, input_precision=PRECISION)
    return _to_block(pairs, TY, TX, KR, KC)


@triton.jit
def _logits(s, in_window, rpb_ptr, h, ty0, tx0, r0, c0, scale,
            TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
            KH: tl.constexpr, KW: tl.constexpr, RPB_W: tl.constexpr, HAS_RPB: tl.constexpr,
            TILE_IS_QUERY: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits ``(scale * q.k + rpb) * log2(e)`` of a (tile, chunk) block, -inf outside
    the windows."""
    s = s * (scale * LOG2E)
    if HAS_RPB:
        s += _rpb_bias(rpb_ptr, h, ty0, tx0, r0, c0, TY, TX, KR, KC, KH, KW, RPB_W,
                       TILE_IS_QUERY, PRECISION) * LOG2E
    return tl.where(in_window, s, float('-inf'))


@triton.jit
def _in_window(wy, wx, ky, kx, KH: tl.constexpr, KW: tl.constexpr):
    """Whether key ``(ky, kx)`` lies in the window that starts at ``(wy, wx)`` (broadcasting)."""
    return (ky >= wy) & (ky < wy + KH) & (kx >= wx) & (kx < wx + KW)


@triton.jit
def na2d_fwd_kernel(
        q_ptr, k_ptr, v_ptr, rpb_ptr, o_ptr, lse_ptr,
        sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh, sob, soy, sox, soh,
        H, W, heads, D, scale,
        KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        HAS_RPB: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr, RPB_W: tl.constexpr,
        TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """out and lse of a query tile, over its halo."""
    b, h, cy, cx, ny, nx, ty0, tx0 = _program_geometry(H, W, heads, DH, DW, TY, TX)
    if ty0 >= ny:
        return
    py, px, q_valid = _tile(ty0, tx0, ny, nx, TY, TX)
    wy = _window_start(py, ny, KH)
    wx = _window_start(px, nx, KW)
    y = py * DH + cy
    x = px * DW + cx
    d = tl.arange(0, BD)
    d_valid = d < D
    q = _load_rows(q_ptr, b, h, y, x, sqb, sqy, sqx, sqh, d, d_valid[None, :])

    m = tl.full([TY * TX], -1.0e30, tl.float32)  # finite: a chunk outside a window gives no NaN
    l = tl.zeros([TY * TX], tl.float32)
    acc = tl.zeros([TY * TX, BD], tl.float32)
    hy0, hy1 = _halo(ty0, ny, TY, KH)
    hx0, hx1 = _halo(tx0, nx, TX, KW)
    for r0 in range(hy0, hy1, KR):
        for c0 in range(hx0, hx1, KC):
            ky, kx, k_valid = _chunk(r0, c0, hy1, hx1, ny, nx, KR, KC)
            kv_mask = k_valid[:, None] & d_valid[None, :]
            k = _load_rows(k_ptr, b, h, ky * DH + cy, kx * DW + cx, skb, sky, skx, skh, d,
                           kv_mask)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            in_window = (_in_window(wy[:, None], wx[:, None], ky[None, :], kx[None, :], KH, KW)
                         & k_valid[None, :])
            s = _logits(s, in_window, rpb_ptr, h, ty0, tx0, r0, c0, scale, TY, TX, KR, KC, KH,
                        KW, RPB_W, HAS_RPB, True, PRECISION)
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = _load_rows(v_ptr, b, h, ky * DH + cy, kx * DW + cx, svb, svy, svx, svh, d,
                           kv_mask)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new

    o_rows = _tile_offsets(o_ptr, b, h, y, x, sob, soy, sox, soh)
    tl.store(o_rows[:, None] + d[None, :], (acc / l[:, None]).to(o_ptr.dtype.element_ty),
             mask=q_valid[:, None] & d_valid[None, :])
    tl.store(lse_ptr + _lse_index(b, h, y, x, H, W, heads), (m + tl.log2(l)) * LN2, mask=q_valid)


@triton.jit
def na2d_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, rpb_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, drpb_ptr,
        sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh,
        H, W, heads, D, scale, drpb_slots,
        KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        HAS_RPB: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
        RPB_H: tl.constexpr, RPB_W: tl.constexpr,
        TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """dQ of a query tile and, with rpb, the tile's share of drpb (``[RPB_H, RPB_W]``, padded).

    do and dq are contiguous. drpb_ptr: ``[B * heads, dh * dw, drpb_slots, RPB_H, RPB_W]``
    float32; this program writes slot ``program_id(0)`` of its (batch * head, group) row.
    """
    b, h, cy, cx, ny, nx, ty0, tx0 = _program_geometry(H, W, heads, DH, DW, TY, TX)
    if ty0 >= ny:
        return
    py, px, q_valid = _tile(ty0, tx0, ny, nx, TY, TX)
    wy = _window_start(py, ny, KH)
    wx = _window_start(px, nx, KW)
    y = py * DH + cy
    x = px * DW + cx
    d = tl.arange(0, BD)
    d_valid = d < D
    q = _load_rows(q_ptr, b, h, y, x, sqb, sqy, sqx, sqh, d, d_valid[None, :])
    do = tl.load(_contiguous_rows(do_ptr, b, h, y, x, H, W, heads, D)[:, None] + d[None, :],
                 mask=d_valid[None, :], other=0.0)
    lse_index = _lse_index(b, h, y, x, H, W, heads)
    lse2 = tl.load(lse_ptr + lse_index) * LOG2E
    delta = tl.load(delta_ptr + lse_index)

    dq = tl.zeros([TY * TX, BD], tl.float32)
    if HAS_RPB:
        drpb = tl.zeros([RPB_H, RPB_W], tl.float32)
    hy0, hy1 = _halo(ty0, ny, TY, KH)
    hx0, hx1 = _halo(tx0, nx, TX, KW)
    for r0 in range(hy0, hy1, KR):
        for c0 in range(hx0, hx1, KC):
            ky, kx, k_valid = _chunk(r0, c0, hy1, hx1, ny, nx, KR, KC)
            kv_mask = k_valid[:, None] & d_valid[None, :]
            k = _load_rows(k_ptr, b, h, ky * DH + cy, kx * DW + cx, skb, sky, skx, skh, d,
                           kv_mask)
            v = _load_rows(v_ptr, b, h, ky * DH + cy, kx * DW + cx, svb, svy, svx, svh, d,
                           kv_mask)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            in_window = (_in_window(wy[:, None], wx[:, None], ky[None, :], kx[None, :], KH, KW)
                         & k_valid[None, :] & q_valid[:, None])
            s = _logits(s, in_window, rpb_ptr, h, ty0, tx0, r0, c0, scale, TY, TX, KR, KC, KH,
                        KW, RPB_W, HAS_RPB, True, PRECISION)
            p = tl.exp2(s - lse2[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])  # zero outside the windows (p is)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if HAS_RPB:
                # drpb[a, c] += the sum of ds over the pairs in bin (a, c): regroup ds by pairs,
                # [(qy', ky'), (qx', kx')], and fold each axis with a one-hot matmul.
                ds_pairs = _to_pairs(ds, TY, TX, KR, KC)
                col_bins = _pair_bins(c0, tx0, TX, KC, KW, True)
                fold_x = (col_bins[:, None] == tl.arange(0, RPB_W)[None, :]).to(tl.float32)
                t = tl.dot(ds_pairs, fold_x, input_precision=PRECISION)  # [(qy', ky'), RPB_W]
                row_bins = _pair_bins(r0, ty0, TY, KR, KH, True)
                fold_y = (row_bins[:, None] == tl.arange(0, RPB_H)[None, :]).to(tl.float32)
                drpb += tl.dot(tl.trans(fold_y), t, input_precision=PRECISION)

    tl.store(_contiguous_rows(dq_ptr, b, h, y, x, H, W, heads, D)[:, None] + d[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_valid[:, None] & d_valid[None, :])
    if HAS_RPB:
        slot = ((tl.program_id(2).to(tl.int64) * (DH * DW) + tl.program_id(1)) * drpb_slots
                + tl.program_id(0))
        a = tl.arange(0, RPB_H)
        c = tl.arange(0, RPB_W)
        tl.store(drpb_ptr + slot * (RPB_H * RPB_W) + a[:, None] * RPB_W + c[None, :], drpb)


@triton.jit
def na2d_bwd_dkv_kernel(
        q_ptr, k_ptr, v_ptr, rpb_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        sqb, sqy, sqx, sqh, skb, sky, skx, skh, svb, svy, svx, svh,
        H, W, heads, D, scale,
        KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        HAS_RPB: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr, RPB_W: tl.constexpr,
        TY: tl.constexpr, TX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """dK and dV of a key tile, over the queries whose windows hold its keys. do, dk, dv are
    contiguous."""
    b, h, cy, cx, ny, nx, ty0, tx0 = _program_geometry(H, W, heads, DH, DW, TY, TX)
    if ty0 >= ny:
        return
    ky, kx, k_valid = _tile(ty0, tx0, ny, nx, TY, TX)
    y = ky * DH + cy
    x = kx * DW + cx
    d = tl.arange(0, BD)
    d_valid = d < D
    k = _load_rows(k_ptr, b, h, y, x, skb, sky, skx, skh, d, d_valid[None, :])
    v = _load_rows(v_ptr, b, h, y, x, svb, svy, svx, svh, d, d_valid[None, :])

    dk = tl.zeros([TY * TX, BD], tl.float32)
    dv = tl.zeros([TY * TX, BD], tl.float32)
    qy0, qy1 = _inverse(ty0, ny, TY, KH)
    qx0, qx1 = _inverse(tx0, nx, TX, KW)
    for r0 in range(qy0, qy1, KR):
        for c0 in range(qx0, qx1, KC):
            qy, qx, q_valid = _chunk(r0, c0, qy1, qx1, ny, nx, KR, KC)
            qd_mask = q_valid[:, None] & d_valid[None, :]
            q = _load_rows(q_ptr, b, h, qy * DH + cy, qx * DW + cx, sqb, sqy, sqx, sqh, d,
                           qd_mask)
            do = tl.load(_contiguous_rows(do_ptr, b, h, qy * DH + cy, qx * DW + cx, H, W, heads,
                                          D)[:, None] + d[None, :], mask=qd_mask, other=0.0)
            lse_index = _lse_index(b, h, qy * DH + cy, qx * DW + cx, H, W, heads)
            lse2 = tl.load(lse_ptr + lse_index, mask=q_valid, other=0.0) * LOG2E
            delta = tl.load(delta_ptr + lse_index, mask=q_valid, other=0.0)
            # transposed blocks: [keys of the tile, queries of the chunk]
            wy = _window_start(qy, ny, KH)
            wx = _window_start(qx, nx, KW)
            in_window = (_in_window(wy[None, :], wx[None, :], ky[:, None], kx[:, None], KH, KW)
                         & k_valid[:, None] & q_valid[None, :])
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION)
            st = _logits(st, in_window, rpb_ptr, h, ty0, tx0, r0, c0, scale, TY, TX, KR, KC, KH,
                         KW, RPB_W, HAS_RPB, False, PRECISION)
            pt = tl.exp2(st - lse2[None, :])
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)

    rows = _contiguous_rows(0, b, h, y, x, H, W, heads, D)[:, None] + d[None, :]
    mask = k_valid[:, None] & d_valid[None, :]
    tl.store(dk_ptr + rows, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=mask)
