"""The jitted pieces of a training step: per-token log-probs of completions under the model, the
GRPO and SFT losses over micro-batches with exact accumulation, the optimizer, and the update that
skips non-finite gradients.

RL batch layout (static shapes; every array is padded):

    prompt_ids        [P, Lp]     right-padded prompts          prompt_mask [P, Lp] bool
    prompt_positions  [3, P, Lp]  M-RoPE ids (model/rope.py)    rope_deltas [P]
    vision            packed vision items of the P prompts (model/packing.py) or absent
    sample_to_prompt  [S]         the prompt each completion continues
    completion_ids    [S, Lc]     completion_mask [S, Lc] bool
    advantages        [S]         old_logp / ref_logp / sampler_logp [S, Lc] (optional)

SFT batches are the data pipeline's whole sequences (prompt + target) with a loss_mask.

The vision tower and the prompt's pass through the decoder run once per prompt and are shared by
its completions (Qwen2VL.shared_prefix_hidden_states).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrl.objectives import grpo, sft
from model.qwen2_vl import Qwen2VL

Batch = dict[str, Any]


def completion_logprobs(
    model: Qwen2VL,
    batch: Batch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> dict[str, jnp.ndarray]:
    """log p(completion token | prompt, earlier completion tokens) [S, Lc] (and the entropy)."""
    s2p = batch["sample_to_prompt"]
    prompt_mask = batch["prompt_mask"].astype(bool)
    completion_mask = batch["completion_mask"].astype(bool)
    lc = completion_mask.shape[1]
    prompt_len = prompt_mask.sum(axis=1)
    start = (batch["rope_deltas"] + prompt_len)[s2p][:, None] + jnp.arange(lc)[None, :]
    prompt_h, completion_h = model.shared_prefix_hidden_states(
        model.embed(batch["prompt_ids"], batch.get("vision")),
        batch["prompt_positions"],
        prompt_mask,
        model.embed(batch["completion_ids"]),
        jnp.broadcast_to(start, (3, *start.shape)),
        completion_mask,
        s2p,
    )
    # Completion token 0 is predicted at its prompt's last token, token j at token j - 1.
    last = jnp.take_along_axis(prompt_h, (prompt_len - 1)[:, None, None], axis=1)[s2p]
    picked = jnp.concatenate([last, completion_h[:, : lc - 1]], axis=1)
    out = {}
    result = model.token_logprobs(
        picked,
        batch["completion_ids"],
        chunk_size=chunk_size,
        temperature=temperature,
        with_entropy=with_entropy,
    )
    if with_entropy:
        out["logp"], out["entropy"] = result
    else:
        out["logp"] = result
    return out


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """What the loss needs from the config (static: part of the compiled program)."""

    kind: str = "grpo"  # "grpo" or "sft"
    policy_loss: str = "grpo"
    aggregation: str = "seq_mean_token_mean"
    beta: float = 0.0
    kl_clamp: float = 10.0  # |ref - logp| bound inside the k3 KL; 0 = none
    entropy_coef: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    norm_constant: float | None = None
    temperature: float = 1.0
    chunk_size: int = 1024
    train_on_prompt: bool = False
    with_entropy: bool = True


def micro_batch_loss(model: Qwen2VL, batch: Batch, s: LossSettings) -> grpo.LossOutput:
    """The loss of one micro-batch as (weighted sum, denominator, metric pairs)."""
    if s.kind == "sft":
        return sft_micro_batch_loss(model, batch, s)
    out = completion_logprobs(
        model,
        batch,
        temperature=s.temperature,
        chunk_size=s.chunk_size,
        with_entropy=s.with_entropy,
    )
    logp = out["logp"]
    old = batch.get("old_logp")
    old = jax.lax.stop_gradient(logp) if old is None else old
    loss = grpo.POLICY_LOSSES.get(s.policy_loss)(
        logp,
        old,
        batch["advantages"],
        batch["completion_mask"],
        logp_ref=batch.get("ref_logp"),
        beta=s.beta,
        eps_low=s.eps_low,
        eps_high=s.eps_high,
        aggregation=s.aggregation,
        norm_constant=s.norm_constant,
        entropy=out.get("entropy"),
        entropy_coef=s.entropy_coef,
        kl_clamp=s.kl_clamp,
    )
    metrics = dict(loss.metrics)
    if "sampler_logp" in batch:
        # Sampler vs trainer log-probs of the same tokens: the first thing to look at when RL
        # goes wrong (a mismatch means the two disagree about the policy).
        mask = batch["completion_mask"].astype(jnp.float32)
        diff = jnp.abs(jax.lax.stop_gradient(logp) - batch["sampler_logp"])
        metrics["sampler_logp_abs_diff"] = (jnp.sum(diff * mask), mask.sum())
    return grpo.LossOutput(loss.total, loss.denominator, metrics)


def sft_micro_batch_loss(model: Qwen2VL, batch: Batch, s: LossSettings) -> grpo.LossOutput:
    """SFT on whole sequences (prompt + target) of the data pipeline: input_ids, attention_mask,
    positions, vision, loss_mask [B, L] (1 on target tokens). Position t predicts token t + 1."""
    valid = batch["attention_mask"].astype(bool)
    hidden = model(batch["input_ids"], batch["positions"], valid, batch.get("vision"))
    targets = jnp.roll(batch["input_ids"], -1, axis=1)
    logp = model.token_logprobs(hidden, targets, chunk_size=s.chunk_size)
    next_valid = jnp.roll(valid, -1, axis=1).at[:, -1].set(False)
    target_mask = jnp.roll(batch["loss_mask"].astype(bool), -1, axis=1) & next_valid
    prompt_mask = valid & next_valid & ~target_mask
    total, count = sft.sft_loss(logp, target_mask, prompt_mask, train_on_prompt=s.train_on_prompt)
    return grpo.LossOutput(total, count, {"nll": (jax.lax.stop_gradient(total), count)})


def lr_schedule(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_lr_fraction: float = 0.0,
) -> optax.Schedule:
    """The learning rate of update `step` (0-based), as transformers' schedulers give it.

    Linear warm-up from 0 over `warmup_steps`, then over the remaining `total_steps -
    warmup_steps` (the horizon): "cosine" to `end_lr_fraction * learning_rate` (HF
    `get_cosine_schedule_with_warmup`), "linear" likewise (HF `get_linear_schedule_with_warmup`,
    the Trainer's default), "constant" (HF `constant_with_warmup`). Past the horizon the rate
    stays at its end value.
    """
    total_steps = max(total_steps, 1)
    end = learning_rate * end_lr_fraction
    decay = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, decay, alpha=end_lr_fraction)
    elif schedule == "linear":
        main = optax.linear_schedule(learning_rate, end, decay)
    elif schedule == "constant":
        main = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (cosine, linear, constant)")
    if not warmup_steps:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), main], [warmup_steps]
    )


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_lr_fraction: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    freeze: Callable[[tuple], bool] | None = None,
    params: nnx.State | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW on `lr_schedule(...)` with global-norm clipping; parameters for which
    `freeze(path)` is true get no update (e.g. a frozen vision tower). `total_steps` is the
    schedule's horizon, which may differ from the number of updates a stage makes."""
    lr = lr_schedule(learning_rate, total_steps, warmup_steps, schedule, end_lr_fraction)
    chain = []
    if grad_clip:
        chain.append(optax.clip_by_global_norm(grad_clip))
    chain.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    tx = optax.chain(*chain)
    if freeze is not None:
        if params is None:
            raise ValueError("freezing parameters needs the parameter tree")
        labels = jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if freeze(_path_names(path)) else "trained", params
        )
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, lr


def optimizer_state_shardings(tx: optax.GradientTransformation, params: nnx.State) -> Any:
    """Shardings of `tx`'s state for `params` (arrays, or ShapeDtypeStructs with shardings):
    every tree in the state that mirrors the parameters (Adam's moments) takes the parameters'
    shardings, everything else (step counts) is replicated."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    first = jax.tree.leaves(shardings)[0]
    replicated = (
        NamedSharding(first.mesh, PartitionSpec()) if isinstance(first, NamedSharding) else first
    )
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 (a frozen parameter)
    return optax.tree_map_params(
        tx,
        lambda leaf, sharding: leaf if masked(leaf) else sharding,
        jax.eval_shape(tx.init, params),
        shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=masked,
    )


def init_optimizer_state(tx: optax.GradientTransformation, params: nnx.State) -> optax.OptState:
    """`tx.init(params)` created in place with `optimizer_state_shardings` (a plain jit of
    tx.init would put the moments on one device: it reads only the parameters' shapes)."""
    return jax.jit(tx.init, out_shardings=optimizer_state_shardings(tx, params))(params)


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    settings: LossSettings,
    params: nnx.State,
) -> Callable:
    """`train_step` jitted for `params`' layout: parameters and optimizer state donated and
    returned with the shardings they came in with (so step 2 runs the program step 1 compiled).
    params: arrays or ShapeDtypeStructs with shardings. Call as fn(params, opt_state, batch)."""
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    return jax.jit(
        functools.partial(train_step, graphdef, tx=tx, settings=settings),
        donate_argnums=(0, 1),
        out_shardings=(param_shardings, optimizer_state_shardings(tx, params), None),
    )


def _path_names(path) -> tuple:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(getattr(entry, attr))
                break
    return tuple(names)


def train_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    opt_state: optax.OptState,
    micro_batches: Batch,
    tx: optax.GradientTransformation,
    settings: LossSettings,
) -> tuple[nnx.State, optax.OptState, dict[str, jnp.ndarray]]:
    """One optimizer update from micro-batches stacked on a leading axis [M, ...].

    Gradients of the micro-batch loss SUMS are accumulated and divided once by the total
    denominator, so M micro-batches give exactly the one-batch update. A non-finite loss or
    gradient leaves parameters and optimizer state unchanged (`skipped` = 1).
    """

    def loss_sum(p, mb):
        out = micro_batch_loss(nnx.merge(graphdef, p), mb, settings)
        return out.total, out

    grad_fn = jax.grad(loss_sum, has_aux=True)

    def accumulate(carry, mb):
        grads, total, denom, metrics = carry
        g, out = grad_fn(params, mb)
        grads = jax.tree.map(jnp.add, grads, g)
        metrics = {k: (metrics[k][0] + v[0], metrics[k][1] + v[1]) for k, v in out.metrics.items()}
        return (grads, total + out.total, denom + out.denominator, metrics), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    metric_shapes = jax.eval_shape(
        lambda: micro_batch_loss(nnx.merge(graphdef, params), first, settings).metrics
    )
    zero_metrics = {k: (jnp.zeros(()), jnp.zeros(())) for k in metric_shapes}
    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, total, denom, metrics), _ = jax.lax.scan(
        accumulate, (zeros, jnp.zeros(()), jnp.zeros(()), zero_metrics), micro_batches
    )
    scale = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    loss = total * scale
    new_params, new_opt_state, grad_norm, finite = apply_gradients(
        params, opt_state, grads, loss, tx
    )
    out = {
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped": 1.0 - finite.astype(jnp.float32),
        **{k: grpo.safe_divide(*v) for k, v in metrics.items()},
    }
    return new_params, new_opt_state, out


def apply_gradients(
    params: nnx.State,
    opt_state: optax.OptState,
    grads: nnx.State,
    loss: jnp.ndarray,
    tx: optax.GradientTransformation,
) -> tuple[nnx.State, optax.OptState, jnp.ndarray, jnp.ndarray]:
    """The optimizer's part of a train step: `tx`'s update of `params` by `grads`, unless the
    loss or the gradient is not finite (parameters and state kept). Returns the new parameters
    and state, the gradient norm and whether the update was applied. jaxvrl.fit compiles it alone
    to split a predicted step's train time from its optimizer time."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Non-finite gradients are zeroed before the update so they cannot poison the moments.
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt_state = tx.update(safe_grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_params = jax.tree.map(keep, new_params, params)
    new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    return new_params, new_opt_state, grad_norm, finite


def reference_parameters(params: nnx.State, dtype: str | jnp.dtype) -> nnx.State:
    """A frozen copy of `params` for the reference model, floats held in the compute `dtype`:
    its forward casts every matmul weight to that dtype anyway, so float32 master weights need
    not be held twice (with bfloat16 compute the copy takes half the bytes). Only weights used in
    float32 (LayerNorm's scale and bias) see the rounding."""

    def copy(x):
        wider = (
            jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > jnp.dtype(dtype).itemsize
        )
        return x.astype(dtype) if wider else x.copy()

    return jax.tree.map(copy, params)


def reference_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, batch: Batch, settings: LossSettings
) -> jnp.ndarray:
    """Log-probs of the completions under fixed parameters (reference model or old policy)."""
    model = nnx.merge(graphdef, params)
    out = completion_logprobs(
        model, batch, temperature=settings.temperature, chunk_size=settings.chunk_size
    )
    return jax.lax.stop_gradient(out["logp"])


def stacked_reference_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, stacked: Batch, settings: LossSettings
) -> jnp.ndarray:
    """`reference_logprobs` of every micro-batch of a stacked batch [M, ...] -> [M, S, Lc]."""
    return jax.lax.map(lambda mb: reference_logprobs(graphdef, params, mb, settings), stacked)
