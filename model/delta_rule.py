"""Gated DeltaNet core of Qwen3.5's linear-attention layers (Yang et al. 2024, "Gated Delta
Networks"): the gated delta rule in its chunked (prefill, training) and token-by-token (decode)
forms, and the causal depthwise convolution that precedes it. Pure functions, no parameters.

Layouts are batch-major: q, k [batch, seq, k_heads, k_dim]; v [batch, seq, v_heads, v_dim];
g (log decay, <= 0) and beta (write strength, in (0, 1)) [batch, seq, v_heads]; the recurrent
state S [batch, v_heads, k_dim, v_dim]. Each q/k head serves v_heads // k_heads consecutive value
heads. q and k are l2-normalised and q is scaled by k_dim**-0.5, all in float32 (as transformers'
`torch_*_gated_delta_rule` with `use_qk_l2norm_in_kernel=True`). Per head and token t:

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T
        = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    out_t = S_t^T q_t

Chunked form: within a chunk that starts from state S_0, let G_i = g_1 + ... + g_i and
u_j = beta_j (v_j - exp(g_j) S_{j-1}^T k_j) the correction written at j. Unrolling,

    S_i   = exp(G_i) S_0 + sum_{j<=i} exp(G_i - G_j) k_j u_j^T
    u_j  + sum_{m<j} beta_j exp(G_j - G_m) (k_j . k_m) u_m = beta_j v_j - beta_j exp(G_j) S_0^T k_j
    out_i = exp(G_i) S_0^T q_i + sum_{j<=i} exp(G_i - G_j) (q_i . k_j) u_j

The second line is a unit-lower-triangular system (I + A) U = B (the "UT transform"); it is
solved by forward substitution once per chunk for [beta v | beta exp(G) k], which do not
depend on S_0, so only two [chunk, dim] x [dim, dim] products per chunk remain inside the scan
over chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2norm(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """x / sqrt(|x|^2 + eps) over the last axis (transformers' / FLA's `l2norm`)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _prepare(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, g: jnp.ndarray, beta: jnp.ndarray
) -> tuple[jnp.ndarray, ...]:
    """Float32 inputs with q/k repeated to the value heads, l2-normalised, q scaled."""
    repeats = v.shape[2] // k.shape[2]
    q, k = (jnp.repeat(x.astype(jnp.float32), repeats, axis=2) for x in (q, k))
    q = l2norm(q) * q.shape[-1] ** -0.5
    k = l2norm(k)
    return q, k, v.astype(jnp.float32), g.astype(jnp.float32), beta.astype(jnp.float32)


def _initial_state(
    initial_state: jnp.ndarray | None, k: jnp.ndarray, v: jnp.ndarray
) -> jnp.ndarray:
    if initial_state is None:
        return jnp.zeros((k.shape[0], v.shape[2], k.shape[-1], v.shape[-1]), jnp.float32)
    return initial_state.astype(jnp.float32)


def _segment_sum(g: jnp.ndarray) -> jnp.ndarray:
    """[..., C] -> [..., C, C] with [i, j] = g_{j+1} + ... + g_i for i >= j, -inf above.

    Summing each window directly instead of differencing cumulative sums (G_i - G_j) keeps
    the decays exact when G is large: float32 G = -60 already costs ~4e-6 absolute."""
    size = g.shape[-1]
    strictly_lower = jnp.tril(jnp.ones((size, size), bool), -1)
    # terms[..., s, j] = g_s for s > j; a cumulative sum over s gives the window sums.
    terms = jnp.where(strictly_lower, g[..., :, None], 0.0)
    windows = jnp.cumsum(terms, axis=-2)
    return jnp.where(strictly_lower | jnp.eye(size, dtype=bool), windows, -jnp.inf)


def _substitute(a: jnp.ndarray, b: jnp.ndarray, transpose: bool) -> jnp.ndarray:
    """X with (I + A) X = B (rows first to last) or (I + A)^T X = B (last to first), for A
    strictly lower triangular [..., C, C] and B [..., C, D]: one row per step of a loop of plain
    XLA ops."""
    size = a.shape[-1]
    a = jnp.tril(a, -1)
    if transpose:
        a = jnp.swapaxes(a, -1, -2)

    def row(step, x):
        i = size - 1 - step if transpose else step
        xi = b[..., i, :] - jnp.einsum("...j,...jd->...d", a[..., i, :], x)
        return x.at[..., i, :].set(xi)

    return jax.lax.fori_loop(0, size, row, jnp.zeros_like(b))


@jax.custom_vjp
def unit_lower_solve(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """X with (I + tril(A, -1)) X = B: A [..., C, C] (its diagonal and upper part unused),
    B [..., C, D].

    Forward substitution in plain XLA ops, not jax.scipy.linalg.solve_triangular: on the CPU
    that lowers to LAPACK's trsm (a custom call), and the compiled RL step of the Qwen3.5 demo
    hung there, at 0% CPU, twice. The gradient is written out (the transposed solve, then
    dA = -tril(dB X^T, -1)), so differentiating keeps A and X only, not the loop's every step
    (which took Qwen3.5-9B's SFT step on h100x8 from 28.07 to 35.10 GiB per chip)."""
    return _substitute(a, b, transpose=False)


def _solve_forward(a, b):
    x = _substitute(a, b, transpose=False)
    return x, (a, x)


def _solve_backward(residuals, dx):
    a, x = residuals
    db = _substitute(a, dx, transpose=True)
    da = -jnp.tril(jnp.einsum("...id,...jd->...ij", db, x), -1)
    return da, db


unit_lower_solve.defvjp(_solve_forward, _solve_backward)


def chunked_gated_delta_rule(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    g: jnp.ndarray,
    beta: jnp.ndarray,
    initial_state: jnp.ndarray | None = None,
    *,
    chunk_size: int = 64,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The gated delta rule over a sequence, chunk by chunk (transformers'
    `torch_chunk_gated_delta_rule`). Memory is linear in seq: [chunk, chunk] matrices per chunk.

    Returns out [batch, seq, v_heads, v_dim] in q's dtype and the final state
    [batch, v_heads, k_dim, v_dim] in float32 (the state after the last token)."""
    out_dtype = q.dtype
    state = _initial_state(initial_state, k, v)
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    batch, length, heads, _ = k.shape
    # A chunk longer than the sequence only adds padding to solve through: a shorter sequence
    # (the training pass's completions) takes the smallest power of two holding it, at least
    # 16 (bench/hybrid_layer_time.py: 192 completions of 32 tokens, forward + backward 213 ms
    # with chunks of 64, 70 with 32, on a 2-core CPU).
    chunk_size = min(chunk_size, max(16, 1 << (length - 1).bit_length()))
    # Padded tokens (g = beta = 0, zero q/k/v) neither decay nor write: the final state is the
    # state after the last real token.
    pad = -length % chunk_size
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    g, beta = (jnp.pad(x, ((0, 0), (0, pad), (0, 0))) for x in (g, beta))
    chunks = (length + pad) // chunk_size

    # [chunks, batch, heads, chunk, dim]: the scan runs over the leading axis.
    def split(x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape(batch, chunks, chunk_size, heads, *x.shape[3:])
        return jnp.moveaxis(x, (1, 3), (0, 2))

    q, k, v, g, beta = (split(x) for x in (q, k, v, g, beta))

    cumulative = jnp.cumsum(g, axis=-1)  # G_i, decay from the chunk's start
    decay = jnp.exp(_segment_sum(g))  # exp(G_i - G_j), zero above the diagonal
    to_end = decay[..., -1, :]  # exp(G_C - G_j), decay from j to the chunk's end
    from_start = jnp.exp(cumulative)[..., None]

    # UT transform: (I + A) [new_values | k_cumdecay] = [beta v | beta exp(G) k] with
    # A[j, m] = beta_j exp(G_j - G_m) (k_j . k_m), m < j. Then u = new_values - k_cumdecay S_0.
    gram = jnp.einsum("...jd,...md->...jm", k, k)
    system = beta[..., None] * gram * decay
    rhs = beta[..., None] * jnp.concatenate([v, from_start * k], axis=-1)
    solved = unit_lower_solve(system, rhs)
    new_values, k_cumdecay = solved[..., : v.shape[-1]], solved[..., v.shape[-1] :]
    intra = jnp.einsum("...id,...jd->...ij", q, k) * decay
    q_decayed = q * from_start
    k_to_end = k * to_end[..., None]
    chunk_decay = jnp.exp(cumulative[..., -1])[..., None, None]

    def step(state: jnp.ndarray, chunk: tuple[jnp.ndarray, ...]) -> tuple:
        new_values, k_cumdecay, q_decayed, intra, k_to_end, chunk_decay = chunk
        u = new_values - k_cumdecay @ state
        out = q_decayed @ state + intra @ u
        return chunk_decay * state + jnp.swapaxes(k_to_end, -1, -2) @ u, out

    inputs = (new_values, k_cumdecay, q_decayed, intra, k_to_end, chunk_decay)
    state, out = jax.lax.scan(step, state, inputs)
    # [chunks, batch, heads, chunk, v_dim] -> [batch, seq, heads, v_dim]
    out = jnp.moveaxis(out, (0, 2), (1, 3)).reshape(batch, chunks * chunk_size, heads, -1)
    return out[:, :length].astype(out_dtype), state


def recurrent_gated_delta_rule(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    g: jnp.ndarray,
    beta: jnp.ndarray,
    initial_state: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The gated delta rule token by token (transformers' `torch_recurrent_gated_delta_rule`):
    the decode form (seq 1) and the plain sequential reference. Same arguments and results as
    `chunked_gated_delta_rule`."""
    out_dtype = q.dtype
    state = _initial_state(initial_state, k, v)
    q, k, v, g, beta = _prepare(q, k, v, g, beta)

    def step(state: jnp.ndarray, token: tuple[jnp.ndarray, ...]) -> tuple:
        q, k, v, g, beta = token  # [batch, heads, ...]
        state = jnp.exp(g)[..., None, None] * state
        delta = beta[..., None] * (v - jnp.einsum("bhk,bhkv->bhv", k, state))
        state = state + k[..., :, None] * delta[..., None, :]
        return state, jnp.einsum("bhk,bhkv->bhv", q, state)

    tokens = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    state, out = jax.lax.scan(step, state, tokens)
    return jnp.moveaxis(out, 0, 1).astype(out_dtype), state


def causal_conv(
    x: jnp.ndarray, weight: jnp.ndarray, state: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Causal depthwise convolution with SiLU, no bias (transformers' `causal_conv1d_fn` /
    `causal_conv1d_update` with activation "silu").

    x [batch, seq, channels]; weight [channels, kernel] (conv1d.weight [C, 1, K] squeezed);
    state [batch, kernel - 1, channels], the inputs just before x (zeros if None). Output t is
    silu(sum_j weight[:, j] * xpad[t + j]) with xpad = concat(state, x), i.e. it reads inputs
    t - kernel + 1 .. t, weight[:, -1] on the current one. Returns (y [batch, seq, channels] in
    x's dtype, the new state: the last kernel - 1 rows of xpad)."""
    batch, length, channels = x.shape
    taps = weight.shape[-1]
    if state is None:
        state = jnp.zeros((batch, taps - 1, channels), x.dtype)
    padded = jnp.concatenate([state.astype(x.dtype), x], axis=1)
    weight = weight.astype(jnp.float32)
    y = sum(padded[:, j : j + length].astype(jnp.float32) * weight[:, j] for j in range(taps))
    return jax.nn.silu(y).astype(x.dtype), padded[:, length:]
