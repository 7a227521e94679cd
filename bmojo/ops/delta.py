"""The delta rule's prediction errors: an associative memory of (key, value) pairs, and how badly it predicts each
new value from its key before learning it.

    e_t = v_t - S_{t-1} k_t          the innovation: what the memory could not predict
    S_t = S_{t-1} + e_t k_t^T        the delta rule with step 1: afterwards S_t k_t = v_t for a unit key

Shapes: k (B, T, Dk), v (B, T, Dv), S (B, Dv, Dk); a zero key leaves S unchanged and predicts 0.  With keys of
norm <= 1 every update multiplies S by a contraction (I - k k^T), so S stays bounded at any length.

The fast path has no loop over tokens or chunks.  Within a chunk of L tokens the errors solve one unit lower
triangular system (each of its rows is the recurrence for e_t written out):

    (I + A) E = V - K S_0^T,      A = tril(K K^T, -1)

so E = U - W S_0^T with U = (I + A)^-1 V and W = (I + A)^-1 K, and the state after the chunk is affine in the state
before it: S_end = S_0 P + Q with P = I - W^T K, Q = U^T K.  Affine maps compose associatively
((P1, Q1) then (P2, Q2) is (P1 P2, Q1 P2 + Q2)), so the state at every chunk's start is one prefix scan over the
chunks, log2(#chunks) batched products.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(k: torch.Tensor, v: torch.Tensor, state) -> None:
    if k.dim() != 3 or v.dim() != 3 or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"delta_errors: k (B, T, Dk) and v (B, T, Dv) must share (B, T), got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    want = (k.shape[0], v.shape[-1], k.shape[-1])
    if state is not None and tuple(state.shape) != want:
        raise ValueError(f"delta_errors: state must be (B, Dv, Dk) = {want}, got {tuple(state.shape)}")


def delta_errors_ref(k, v, state=None, chunk: int = 64):
    """Reference: the recurrence token by token in float64.  -> (errors (B, T, Dv), final state (B, Dv, Dk)), in
    float32.  `chunk` is accepted for the fast path's signature and has no effect."""
    _check(k, v, state)
    B, T, Dk = k.shape
    S = state.double() if state is not None else k.new_zeros(B, v.shape[-1], Dk, dtype=torch.float64)
    errors = []
    for t in range(T):
        k_t, v_t = k[:, t].double(), v[:, t].double()
        e_t = v_t - torch.einsum("bvk,bk->bv", S, k_t)
        S = S + e_t[:, :, None] * k_t[:, None, :]
        errors.append(e_t)
    E = torch.stack(errors, 1) if errors else v.new_zeros(B, 0, v.shape[-1], dtype=torch.float64)
    return E.float(), S.float()


def delta_errors(k, v, state=None, chunk: int = 64):
    """Fast path, the same signature: chunked triangular solves and one associative scan over chunks, in float32
    (float64 when k is float64; the results come back in that dtype)."""
    _check(k, v, state)
    if chunk < 1:
        raise ValueError(f"delta_errors: chunk must be >= 1, got {chunk}")
    B, T, Dk = k.shape
    Dv = v.shape[-1]
    dt = torch.float64 if k.dtype == torch.float64 else torch.float32
    k, v = k.to(dt), v.to(dt)
    S0 = state.to(dt) if state is not None else k.new_zeros(B, Dv, Dk)
    if T == 0:
        return v.new_zeros(B, 0, Dv), S0.clone()
    L = min(chunk, T)
    pad = -T % L  # zero keys and values at the end: e = 0 and S unchanged, so padding is exact
    K = F.pad(k, (0, 0, 0, pad)).view(B, -1, L, Dk)  # (B, n, L, Dk)
    V = F.pad(v, (0, 0, 0, pad)).view(B, -1, L, Dv)
    n = K.shape[1]
    eye = torch.eye(L, device=k.device, dtype=dt)
    lower = eye + torch.tril(K @ K.transpose(-1, -2), diagonal=-1)  # I + A, unit lower triangular
    W = torch.linalg.solve_triangular(lower, K, upper=False, unitriangular=True)  # (B, n, L, Dk)
    U = torch.linalg.solve_triangular(lower, V, upper=False, unitriangular=True)  # (B, n, L, Dv)
    P = torch.eye(Dk, device=k.device, dtype=dt) - W.transpose(-1, -2) @ K  # (B, n, Dk, Dk)
    Q = U.transpose(-1, -2) @ K  # (B, n, Dv, Dk)
    # inclusive prefix of the chunks' affine maps (Hillis-Steele): after it, (P_b, Q_b) maps S_0 to S after chunk b
    step = 1
    while step < n:
        P_new, Q_new = P.clone(), Q.clone()
        P_new[:, step:] = P[:, :-step] @ P[:, step:]
        Q_new[:, step:] = Q[:, :-step] @ P[:, step:] + Q[:, step:]
        P, Q, step = P_new, Q_new, 2 * step
    S_after = S0[:, None] @ P + Q  # (B, n, Dv, Dk): the state after each chunk
    S_before = torch.cat([S0[:, None], S_after[:, :-1]], 1)
    E = U - W @ S_before.transpose(-1, -2)  # (B, n, L, Dv)
    return E.reshape(B, n * L, Dv)[:, :T], S_after[:, -1]
