"""jaxvrl.fit.flops: matmul FLOPs of a traced program, with every loop counted at its trip count."""

import jax
import jax.numpy as jnp
import pytest

from jaxvrl.fit.flops import matmul_flops

N = 32
MATMUL = 2 * N**3  # one [N, N] x [N, N] product


def scanned(a, b):
    """A scan of len(a) products, then one rematerialised product."""

    def body(c, x):
        return c + x @ b, None

    c, _ = jax.lax.scan(body, jnp.zeros((N, N)), a)
    return jnp.sum(jax.checkpoint(lambda c: jnp.tanh(c @ b))(c))


def test_a_scan_counts_its_body_once_per_step():
    a, b = jnp.ones((4, N, N)), jnp.ones((N, N))
    assert matmul_flops(jax.jit(scanned).trace(a, b).jaxpr) == 5 * MATMUL


def test_the_gradient_counts_backward_and_rematerialised_products():
    # Forward 5; backward: 4 products for d(x @ b)/dx, the checkpointed product recomputed
    # and its input gradient (1 + 1): 11 in all.
    a, b = jnp.ones((4, N, N)), jnp.ones((N, N))
    assert matmul_flops(jax.jit(jax.grad(scanned)).trace(a, b).jaxpr) == 11 * MATMUL


@pytest.mark.parametrize("trips", [1, 7])
def test_a_while_loop_counts_its_body_at_the_given_trip_count(trips):
    def loop(x, b):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ b), (0, x))[1]

    x, b = jnp.ones((N, N)), jnp.ones((N, N))
    assert matmul_flops(jax.jit(loop).trace(x, b).jaxpr, while_trips=trips) == trips * MATMUL


def test_batched_and_contracted_dimensions_of_a_dot_general():
    q, k = jnp.ones((2, 8, 5, 16)), jnp.ones((2, 8, 7, 16))
    fn = lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k)  # noqa: E731
    assert matmul_flops(jax.jit(fn).trace(q, k).jaxpr) == 2 * (2 * 8 * 5 * 7) * 16
