"""The gated delta rule and its causal convolution (model/delta_rule.py) against transformers 5.23
(`torch_chunk_gated_delta_rule`, `torch_recurrent_gated_delta_rule`, `causal_conv1d_fn`,
`causal_conv1d_update` of qwen3_next) and against each other.

Tolerance: everything runs in float32, so two orderings of the same sums differ by float32
rounding accumulated over ~130 tokens and 8-16 wide dot products, a few 1e-7 of the largest value
in practice (1e-6 against torch's chunked form, whose decays difference cumulative log-decays,
G_i - G_j, where ours sum each window). Errors are max |a - b| / max |b|, held to 1e-5: the issue's
bound for the chunked form against the sequential recurrence.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_next import modeling_qwen3_next as reference

from model.delta_rule import (
    causal_conv,
    chunked_gated_delta_rule,
    l2norm,
    recurrent_gated_delta_rule,
)

# The torch paths themselves, not the wrappers that look for FLA / hub kernels first.
torch_chunk = reference.torch_chunk_gated_delta_rule.__wrapped__
torch_recurrent = reference.torch_recurrent_gated_delta_rule.__wrapped__
torch_conv_fn = reference.causal_conv1d_fn.__wrapped__
torch_conv_update = reference.causal_conv1d_update.__wrapped__

BATCH, K_HEADS, V_HEADS, K_DIM, V_DIM = 2, 2, 4, 8, 16
TOLERANCE = 1e-5


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def delta_inputs(length: int, seed: int = 0, initial_state: bool = True) -> dict:
    """Random q, k, v, g, beta (and initial_state) as Qwen3.5 makes them: g = -exp(A_log) *
    softplus(a + dt_bias) <= 0, beta = sigmoid(b)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    a_log = np.log(rng.uniform(1.0, 16.0, V_HEADS))
    a = normal(BATCH, length, V_HEADS) - 2.0
    inputs = {
        "q": normal(BATCH, length, K_HEADS, K_DIM),
        "k": normal(BATCH, length, K_HEADS, K_DIM),
        "v": normal(BATCH, length, V_HEADS, V_DIM),
        "g": (-np.exp(a_log) * np.logaddexp(0.0, a)).astype(np.float32),
        "beta": (1.0 / (1.0 + np.exp(-normal(BATCH, length, V_HEADS)))).astype(np.float32),
        "initial_state": None,
    }
    if initial_state:
        inputs["initial_state"] = 0.5 * normal(BATCH, V_HEADS, K_DIM, V_DIM)
    return inputs


def as_jax(inputs: dict) -> dict:
    return {name: None if x is None else jnp.asarray(x) for name, x in inputs.items()}


def run_torch(function, inputs: dict, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    tensors = {name: None if x is None else torch.from_numpy(x) for name, x in inputs.items()}
    out, state = function(
        tensors["q"],
        tensors["k"],
        tensors["v"],
        g=tensors["g"],
        beta=tensors["beta"],
        initial_state=tensors["initial_state"],
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
        **kwargs,
    )
    return out.numpy(), state.numpy()


def sliced(inputs: dict, start: int, stop: int) -> dict:
    return {name: x if name == "initial_state" else x[:, start:stop] for name, x in inputs.items()}


def test_l2norm_matches_transformers():
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    expected = reference.l2norm(torch.from_numpy(x)).numpy()
    assert relative_error(l2norm(jnp.asarray(x)), expected) < TOLERANCE


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("length", [37, 130])
def test_chunked_matches_transformers_chunked(length, chunk_size, initial_state):
    inputs = delta_inputs(length, initial_state=initial_state)
    expected_out, expected_state = run_torch(torch_chunk, inputs, chunk_size=chunk_size)
    out, state = chunked_gated_delta_rule(**as_jax(inputs), chunk_size=chunk_size)
    assert out.shape == (BATCH, length, V_HEADS, V_DIM)
    assert relative_error(out, expected_out) < TOLERANCE
    assert relative_error(state, expected_state) < TOLERANCE


def test_a_sequence_shorter_than_the_chunk_runs_in_a_shorter_chunk_with_the_same_result():
    """20 tokens with chunk_size 64 run as one chunk of 32 (the training pass's completions):
    transformers' 64-token chunk gives the same output and state."""
    inputs = delta_inputs(20, initial_state=True)
    expected_out, expected_state = run_torch(torch_chunk, inputs, chunk_size=64)
    out, state = chunked_gated_delta_rule(**as_jax(inputs), chunk_size=64)
    assert relative_error(out, expected_out) < TOLERANCE
    assert relative_error(state, expected_state) < TOLERANCE


@pytest.mark.parametrize("initial_state", [False, True])
def test_recurrent_matches_transformers_recurrent(initial_state):
    inputs = delta_inputs(37, initial_state=initial_state)
    expected_out, expected_state = run_torch(torch_recurrent, inputs)
    out, state = recurrent_gated_delta_rule(**as_jax(inputs))
    assert relative_error(out, expected_out) < TOLERANCE
    assert relative_error(state, expected_state) < TOLERANCE


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("length", [130])  # 37: test_chunked_matches_transformers_chunked
def test_chunked_equals_sequential_recurrence(length, chunk_size, initial_state):
    inputs = as_jax(delta_inputs(length, initial_state=initial_state))
    out, state = chunked_gated_delta_rule(**inputs, chunk_size=chunk_size)
    expected_out, expected_state = recurrent_gated_delta_rule(**inputs)
    assert relative_error(out, expected_out) < TOLERANCE
    assert relative_error(state, expected_state) < TOLERANCE


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_gradients_equal_sequential_recurrence_gradients(chunk_size):
    """The issue's acceptance bound: gradients of a random-weighted sum of the outputs and the
    final state, with respect to every input, agree to 1e-5 of the largest gradient."""
    inputs = as_jax(delta_inputs(130, seed=1))
    rng = np.random.default_rng(2)
    out_weights = rng.standard_normal((BATCH, 130, V_HEADS, V_DIM)).astype(np.float32)
    state_weights = rng.standard_normal((BATCH, V_HEADS, K_DIM, V_DIM)).astype(np.float32)

    def loss(function, inputs):
        out, state = function(**inputs)
        return jnp.sum(out_weights * out) + jnp.sum(state_weights * state)

    chunked = lambda **x: chunked_gated_delta_rule(**x, chunk_size=chunk_size)
    grads = jax.jit(jax.grad(lambda x: loss(chunked, x)))(inputs)
    expected = jax.jit(jax.grad(lambda x: loss(recurrent_gated_delta_rule, x)))(inputs)
    for name in inputs:
        assert np.isfinite(grads[name]).all(), name
        assert relative_error(grads[name], expected[name]) < TOLERANCE, name


@pytest.mark.parametrize("split", [1, 50, 129])
def test_chunked_prefix_then_rest_equals_whole(split):
    """The rollout's contract: a prefill's final state continues the sequence exactly."""
    inputs = as_jax(delta_inputs(130))
    whole_out, whole_state = chunked_gated_delta_rule(**inputs, chunk_size=16)
    first_out, state = chunked_gated_delta_rule(**sliced(inputs, 0, split), chunk_size=16)
    rest = sliced(inputs, split, 130) | {"initial_state": state}
    rest_out, final_state = chunked_gated_delta_rule(**rest, chunk_size=16)
    assert relative_error(jnp.concatenate([first_out, rest_out], 1), whole_out) < TOLERANCE
    assert relative_error(final_state, whole_state) < TOLERANCE


def test_token_by_token_decode_equals_chunked():
    inputs = as_jax(delta_inputs(37))
    whole_out, whole_state = chunked_gated_delta_rule(**inputs, chunk_size=16)
    decode = jax.jit(recurrent_gated_delta_rule)
    state, outs = inputs["initial_state"], []
    for t in range(37):
        out, state = decode(**sliced(inputs, t, t + 1) | {"initial_state": state})
        outs.append(out)
    assert relative_error(jnp.concatenate(outs, 1), whole_out) < TOLERANCE
    assert relative_error(state, whole_state) < TOLERANCE


def test_jit_and_bfloat16_inputs_give_bfloat16_output_and_float32_state():
    inputs = as_jax(delta_inputs(37))
    expected_out, expected_state = chunked_gated_delta_rule(**inputs, chunk_size=16)
    jitted = jax.jit(chunked_gated_delta_rule, static_argnames="chunk_size")
    out, state = jitted(**inputs, chunk_size=16)
    assert relative_error(out, expected_out) < TOLERANCE
    assert relative_error(state, expected_state) < TOLERANCE

    low = {name: x.astype(jnp.bfloat16) for name, x in inputs.items()}
    for function in (partial(jitted, chunk_size=16), jax.jit(recurrent_gated_delta_rule)):
        out, state = function(**low)
        assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
        # bfloat16 keeps 8 bits of mantissa: inputs and output are rounded to ~4e-3 each.
        assert relative_error(out, expected_out) < 5e-2
        assert relative_error(state, expected_state) < 5e-2


CHANNELS, TAPS = 12, 4


def conv_inputs(length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, length, CHANNELS)).astype(np.float32)
    return x, rng.standard_normal((CHANNELS, TAPS)).astype(np.float32)


def test_causal_conv_matches_transformers_conv1d_fn():
    x, weight = conv_inputs(23)
    # transformers is channel-major: [batch, channels, seq].
    expected = torch_conv_fn(
        torch.from_numpy(x).transpose(1, 2), torch.from_numpy(weight), None, activation="silu"
    )
    y, state = causal_conv(jnp.asarray(x), jnp.asarray(weight))
    assert relative_error(y, expected.transpose(1, 2).numpy()) < TOLERANCE
    np.testing.assert_array_equal(state, x[:, -(TAPS - 1) :])


def test_causal_conv_decode_matches_transformers_conv1d_update():
    x, weight = conv_inputs(23)
    prefill = 5
    channel_major = torch.from_numpy(x).transpose(1, 2)
    # transformers' cache keeps the last TAPS inputs (left-padded with zeros); ours TAPS - 1.
    conv_state = torch.nn.functional.pad(channel_major[..., :prefill], (TAPS - prefill, 0))
    conv_state = conv_state[..., -TAPS:].contiguous()
    torch_weight = torch.from_numpy(weight)
    expected = [
        torch_conv_update(channel_major[..., t : t + 1], conv_state, torch_weight, None, "silu")
        for t in range(prefill, 23)
    ]
    expected = torch.cat(expected, -1).transpose(1, 2).numpy()

    _, state = causal_conv(jnp.asarray(x[:, :prefill]), jnp.asarray(weight))
    step = jax.jit(causal_conv)
    decoded = []
    for t in range(prefill, 23):
        y, state = step(jnp.asarray(x[:, t : t + 1]), jnp.asarray(weight), state)
        decoded.append(y)
    assert relative_error(jnp.concatenate(decoded, 1), expected) < TOLERANCE
    np.testing.assert_array_equal(state, x[:, -(TAPS - 1) :])


@pytest.mark.parametrize("split", [1, 2, 10])
def test_causal_conv_prefix_then_rest_equals_whole(split):
    x, weight = conv_inputs(23)
    x, weight = jnp.asarray(x), jnp.asarray(weight)
    whole, whole_state = causal_conv(x, weight)
    first, state = causal_conv(x[:, :split], weight)
    rest, final_state = causal_conv(x[:, split:], weight, state)
    assert relative_error(jnp.concatenate([first, rest], 1), whole) < TOLERANCE
    np.testing.assert_array_equal(final_state, whole_state)


def test_unit_lower_solve_and_its_written_out_gradient_equal_lapacks():
    """The forward substitution (and its hand-written gradient) against the triangular solve it
    replaces, on a batch of 64 x 64 systems with entries of the UT transform's size."""
    from jax.scipy.linalg import solve_triangular

    from model.delta_rule import unit_lower_solve

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 3, 64, 64)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, 3, 64, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((2, 3, 64, 8)), jnp.float32)

    def reference(a, b):
        system = jnp.tril(a, -1) + jnp.eye(64)
        return solve_triangular(system, b, lower=True, unit_diagonal=True)

    def loss(solve, a, b):
        return jnp.sum(solve(a, b) * w)

    want = reference(a, b)
    np.testing.assert_allclose(unit_lower_solve(a, b), want, rtol=0, atol=1e-5 * np.abs(want).max())
    got = jax.grad(loss, argnums=(1, 2))(unit_lower_solve, a, b)
    ref = jax.grad(loss, argnums=(1, 2))(reference, a, b)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * np.abs(r).max())
