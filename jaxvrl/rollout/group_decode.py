"""Prefill and decoding for groups of samples that share a prompt, built from the model's public
modules (model.Qwen2VL's vision tower, embedding, decoder layers, norm and head).

Three things make a GRPO rollout cheap, and model.Qwen2VL.prefill/decode (one sequence per row)
does none of them:

1. Vision in slice chunks. Vision attention is block-diagonal per temporal slice of an item, so
   the tower runs on chunks of whole slices (repacked on the host: vision_chunks.py) and attention
   costs sum(chunk^2) instead of N^2 over the whole packed sequence (8x less for 8 slices).
2. The prompt cache is shared, not copied: prompt keys/values [P, kv_heads, L, head_dim] are
   read once per prompt per step by all G samples of the prompt (one batched matmul per prompt),
   and each sample keeps only its completion's keys/values [P, kv_heads, G, M, head_dim].
3. Head-major cache layouts, so the attention matmuls read the cache in place (the
   [batch, slots, kv_heads, head_dim] layout of model.text.KVCache makes XLA CPU transpose the
   whole cache on every token).

Samples are laid out as groups [P, G]: row p holds the samples of prompt p (G = the largest
sample count; smaller groups leave inactive slots).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvrl.rollout import sampling
from model import hybrid
from model.config import LINEAR_ATTENTION
from model.layers import MASK_VALUE
from model.sharding import Rules, axis_size, fit_spec, logical_to_spec

# ------------------------------------------------------------------------------------------------
# Vision features of the chunks (device side).


def vision_features(
    model, chunks: dict[str, jnp.ndarray], index: jnp.ndarray, shards: int = 1
) -> jnp.ndarray:
    """The vision tower on every chunk, features gathered back into pad-token order.

    chunks: vision_chunks.vision_chunks' dict [K, C, ...] (K a multiple of `shards`, split over
    them); index: [F]. The chunks run one after another on each shard (a scan: activations of one
    chunk at a time, faster on CPU than all at once), the shards side by side. Returns
    [F, hidden].
    """

    def per_step(x):
        return x.reshape(shards, x.shape[0] // shards, *x.shape[1:]).swapaxes(0, 1)

    steps = {k: per_step(v) for k, v in chunks.items()}  # [K / shards, shards, C, ...]
    features = jax.lax.map(jax.vmap(model.visual), steps)  # [K / shards, shards, C / unit, H]
    features = features.swapaxes(0, 1).reshape(-1, features.shape[-1])
    return features[index].astype(model.dtype)


# ------------------------------------------------------------------------------------------------
# Prefill and decoding (device side).


@struct.dataclass
class GroupCache:
    """Every attention layer's keys/values: the prompts' [layers, P, kv_heads, L, head_dim],
    shared by their samples, and the samples' own [layers, P, kv_heads, G, M, head_dim]; prompt
    validity [P, L]. A hybrid decoder (Qwen3.5) also holds each DeltaNet layer's states per
    sample, conv [linear layers, P, G, K-1, channels] and state [linear layers, P, G, v_heads,
    k_dim, v_dim], each started from its prompt's (None without DeltaNet layers)."""

    prompt_k: jnp.ndarray
    prompt_v: jnp.ndarray
    prompt_valid: jnp.ndarray
    sample_k: jnp.ndarray
    sample_v: jnp.ndarray
    conv: jnp.ndarray | None = None
    state: jnp.ndarray | None = None


def prefill(model, input_ids, positions, attention_mask, features, group_size: int, max_new: int):
    """Prompt forward through the decoder layers, keeping each layer's keys and values (and a
    hybrid decoder's DeltaNet states, copied to each of the prompt's samples).

    input_ids, attention_mask: [P, L] (right-padded); positions: [3, P, L]; features: [F, hidden]
    or None. Returns final hidden states [P, L, hidden] and a GroupCache with room for
    `group_size` samples of `max_new` tokens per prompt.
    """
    t = model.config.text
    p, length = input_ids.shape
    x = model.embed_with_features(input_ids, features)
    hidden, cache = model.prefill_embedded(
        x, positions, attention_mask, model.init_cache(batch=p, slots=length)
    )
    conv = state = None
    if t.is_hybrid:
        conv, state = (
            jnp.repeat(a[:, :, None], group_size, axis=2) for a in (cache.conv, cache.state)
        )
        cache = cache.kv
    tail = (cache.k.shape[0], p, t.num_kv_heads, group_size, max_new, t.head_dim)
    return hidden, GroupCache(
        prompt_k=cache.k.transpose(0, 1, 3, 2, 4),
        prompt_v=cache.v.transpose(0, 1, 3, 2, 4),
        prompt_valid=attention_mask.astype(bool),
        sample_k=jnp.zeros(tail, model.dtype),
        sample_v=jnp.zeros(tail, model.dtype),
        conv=conv,
        state=state,
    )


def _group_attention(q, pk, pv, prompt_valid, sk, sv, sample_valid, scale):
    """Attention of one new token per sample over its prompt's cache and its own.

    q: [P, G, heads, d]; pk, pv: [P, kv, L, d]; prompt_valid: [P, L]; sk, sv: [P, kv, G, M, d];
    sample_valid: [M]. Softmax over both parts jointly, in float32. Returns [P, G, heads, d].
    Every einsum keeps its batch dimensions leading in both operands (no cache transposes).
    """
    p, g, h, d = q.shape
    kv, length = pk.shape[1], pk.shape[2]
    rep = h // kv
    q = q.reshape(p, g, kv, rep, d).transpose(0, 2, 1, 3, 4)  # [P, kv, G, rep, d]
    f32 = jnp.float32
    s_prompt = jnp.einsum(
        "pkqd,pkld->pkql", q.reshape(p, kv, g * rep, d), pk, preferred_element_type=f32
    )
    s_prompt = jnp.where(prompt_valid[:, None, None, :], s_prompt * scale, MASK_VALUE)
    s_own = jnp.einsum("pkngd,pknmd->pkngm", q, sk, preferred_element_type=f32)
    s_own = jnp.where(sample_valid, s_own * scale, MASK_VALUE)
    scores = jnp.concatenate([s_prompt.reshape(p, kv, g, rep, length), s_own], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1).astype(pv.dtype)
    out = jnp.einsum(
        "pkql,pkld->pkqd", probs[..., :length].reshape(p, kv, g * rep, length), pv
    ).reshape(p, kv, g, rep, d)
    out = out + jnp.einsum("pkngm,pknmd->pkngd", probs[..., length:], sv)
    return out.transpose(0, 2, 1, 3, 4).reshape(p, g, h, d)


def _attention_layer(layer, x, cos, sin, i, prompt_k, prompt_v, cache, sample_k, sample_v, step):
    """An attention decoder layer on one new token per sample, x [P, G, hidden]: writes its
    keys/values at layer i, completion slot `step`, of the samples' caches. Returns x and the
    samples' caches."""
    p, g = x.shape[:2]
    attn = layer.self_attn
    hd = attn.shape[2]
    q, k, v, gate = attn.rotated_qkv_gate(layer.input_layernorm(x), cos, sin)  # [P, G, ., d]
    # [P, G, kv, d] -> [1, P, kv, G, 1, d] at layer i, completion slot `step`.
    at = (i, 0, 0, 0, step, 0)
    new_k = k.transpose(0, 2, 1, 3)[None, :, :, :, None].astype(sample_k.dtype)
    new_v = v.transpose(0, 2, 1, 3)[None, :, :, :, None].astype(sample_v.dtype)
    sample_k = jax.lax.dynamic_update_slice(sample_k, new_k, at)
    sample_v = jax.lax.dynamic_update_slice(sample_v, new_v, at)
    out = _group_attention(
        q,
        prompt_k.astype(q.dtype),
        prompt_v.astype(q.dtype),
        cache.prompt_valid,
        sample_k[i].astype(q.dtype),
        sample_v[i].astype(q.dtype),
        jnp.arange(cache.sample_k.shape[4]) <= step,
        hd**-0.5,
    )
    x = x + attn.output(out, gate)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return x, sample_k, sample_v


def _linear_layer(layer, x, conv, state):
    """A DeltaNet decoder layer on one new token per sample, x [P, G, hidden], from each
    sample's states conv [P, G, K-1, channels] and state [P, G, ...]. Returns x and the new
    states."""
    p, g, hidden = x.shape
    x, conv_new, state_new = layer.linear(
        x.reshape(p * g, 1, hidden),
        None,
        conv.reshape(p * g, *conv.shape[2:]),
        state.reshape(p * g, *state.shape[2:]),
    )
    return (
        x.reshape(p, g, hidden),
        conv_new.reshape(conv.shape),
        state_new.reshape(state.shape),
    )


def decode_step(model, cache: GroupCache, tokens, positions, step):
    """One token per sample. tokens: [P, G] int32, fed at completion slot `step` (a scalar);
    positions: [P] (the same for all samples of a prompt). Returns logits [P, G, vocab] float32
    and the cache with the tokens' keys/values (and DeltaNet states) written."""
    t = model.config.text
    p, g = tokens.shape
    x = model.embed(tokens)  # [P, G, hidden]
    pos = jnp.broadcast_to(positions[None, :, None], (3, p, 1))
    cos, sin = model.rope(pos)  # [P, 1, d]
    if t.is_hybrid:
        return _hybrid_decode_step(model, cache, x, cos, sin, step)

    def body(layer, carry, per_layer):
        x, sample_k, sample_v = carry
        i, prompt_k, prompt_v = per_layer
        return _attention_layer(
            layer, x, cos, sin, i, prompt_k, prompt_v, cache, sample_k, sample_v, step
        ), None

    per_layer = (jnp.arange(t.num_layers), cache.prompt_k, cache.prompt_v)
    (x, sample_k, sample_v), _ = model.over_layers(
        body, (x, cache.sample_k, cache.sample_v), per_layer
    )
    logits = model.logits(model.norm(x))
    return logits, cache.replace(sample_k=sample_k, sample_v=sample_v)


def _hybrid_decode_step(model, cache: GroupCache, x, cos, sin, step):
    """decode_step's layers for a hybrid decoder: a scan over its layer groups
    (model/hybrid.py), each attention layer as above, each DeltaNet layer one recurrence step.
    The DeltaNet states stay whole in the loop's carry and each layer's are updated in place,
    as the samples' keys and values are: stacked as a scan's outputs instead, every token
    rewrote all of them, and each layer's read went through the whole stack (Qwen3.5-9B on
    h100x8: 43.9 GB read per chip per token)."""
    t = model.config.text
    full, linear = hybrid.counts(t)
    groups = t.num_layers // t.period

    def body(group, carry, per_group):
        x, sample_k, sample_v, conv, state = carry
        index, prompt_k, prompt_v = per_group
        f = l_ = 0
        for layer in group.sublayers():
            if layer.kind == LINEAR_ATTENTION:
                i = index * linear + l_
                x, c, s = _linear_layer(
                    layer,
                    x,
                    jax.lax.dynamic_index_in_dim(conv, i, keepdims=False),
                    jax.lax.dynamic_index_in_dim(state, i, keepdims=False),
                )
                conv = jax.lax.dynamic_update_index_in_dim(conv, c.astype(conv.dtype), i, 0)
                state = jax.lax.dynamic_update_index_in_dim(state, s.astype(state.dtype), i, 0)
                l_ += 1
            else:
                x, sample_k, sample_v = _attention_layer(
                    layer, x, cos, sin, index * full + f, prompt_k[f], prompt_v[f],
                    cache, sample_k, sample_v, step,
                )  # fmt: skip
                f += 1
        return (x, sample_k, sample_v, conv, state), None

    per_group = (
        jnp.arange(groups),
        cache.prompt_k.reshape(groups, full, *cache.prompt_k.shape[1:]),
        cache.prompt_v.reshape(groups, full, *cache.prompt_v.shape[1:]),
    )
    carry = (x, cache.sample_k, cache.sample_v, cache.conv, cache.state)
    (x, sample_k, sample_v, conv, state), _ = model.over_layers(body, carry, per_group)
    logits = model.logits(model.norm(x))
    return logits, cache.replace(sample_k=sample_k, sample_v=sample_v, conv=conv, state=state)


# ------------------------------------------------------------------------------------------------
# The whole rollout: one jitted program.

FINISH_NONE = 0  # an unused sample slot
FINISH_STOP = 1  # ended with a stop token (included in the completion and its mask)
FINISH_LENGTH = 2  # reached max_new_tokens


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the program is specialised on besides array shapes."""

    max_new_tokens: int
    top_k: int
    use_top_p: bool
    greedy: bool
    min_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_id: int


def logical_sharding(mesh: Mesh, rules: Rules, axes: Sequence[str | None], shape: Sequence[int]):
    """NamedSharding from logical axes, dropping mesh axes that do not divide a dimension."""
    return NamedSharding(mesh, fit_spec(shape, logical_to_spec(axes, rules, mesh), mesh))


def _at_most(x: jnp.ndarray, dtype) -> jnp.ndarray:
    """x cast to `dtype` when it is a wider float, else unchanged."""
    wider = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > jnp.dtype(dtype).itemsize
    return x.astype(dtype) if wider else x


def _in_decode_layout(graphdef, state, shardings, per_layer: bool) -> nnx.Module:
    """The model with its weights in the decode layout (`shardings`). With `per_layer`, decoder
    layers stacked for a scan (model.scan_layers) are gathered one layer at a time, each its own
    array, and run unrolled: gathered as one stack, the GPU compiler kept transposed copies of
    the MLP weight stacks beside them for the decode loop (Video-R1 on h100x8: 44.04 GiB per chip
    at the rollout's peak and 42.7 GB read per completion token; per layer 31.21 GiB and 16.3 GB,
    the bfloat16 weights being 15.2 GB). The TPU compiler does better with the stack (v5p:2x2x1:
    42.53 GiB and 16.6 GB; per layer 43.54 and 17.5), so there it stays whole."""
    constrain = jax.lax.with_sharding_constraint
    split = per_layer and not isinstance(nnx.merge(graphdef, state).layers, nnx.List)

    def place(path, x, sharding):
        in_stack = split and getattr(path[0], "key", None) == "layers"
        return x if in_stack else constrain(x, sharding)

    model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(place, state, shardings))
    if not split:
        return model
    layer_graphdef, stack = nnx.split(model.layers)
    count = jax.tree.leaves(stack)[0].shape[0]

    def one(i):
        def take(x, sharding):
            spec = PartitionSpec(*tuple(sharding.spec)[1:])
            return constrain(x[i], NamedSharding(sharding.mesh, spec))

        return nnx.merge(layer_graphdef, jax.tree.map(take, stack, shardings["layers"]))

    model.layers = nnx.List([one(i) for i in range(count)])
    return model


def group_rollout(
    graphdef, static: Static, mesh: Mesh, rules: Rules, decode_shardings, state,
    input_ids, attention_mask, positions, rope_deltas, chunks, feature_index,
    sample_active, prompt_seeds, seed, temperature, top_p,
):  # fmt: skip
    """Vision and prefill once per prompt, then G samples per prompt decoded together.

    input_ids, attention_mask: [P, L]; positions: [3, P, L]; rope_deltas, prompt_seeds: [P];
    chunks: vision_chunks.vision_chunks' dict [K, C, ...] and feature_index [F], or None;
    sample_active: [P, G] bool (False: an unused slot); seed: int32 scalar; temperature, top_p:
    float32 scalars. Returns a dict of [P * G, ...] arrays (slot p * G + n = sample n of prompt p).
    """
    constrain = jax.lax.with_sharding_constraint
    # Sampling reads the weights in the compute dtype: a float32 master copy is cast before the
    # decode layout gathers it (half the bytes gathered and held with bfloat16 compute); every
    # matmul casts its weights to that dtype anyway.
    dtype = nnx.merge(graphdef, state).dtype
    state = jax.tree.map(lambda x: _at_most(x, dtype), state)
    per_layer = mesh.devices.flat[0].platform != "tpu"
    model = _in_decode_layout(graphdef, state, decode_shardings, per_layer)
    p, length = input_ids.shape
    g = sample_active.shape[1]
    r, m = p * g, static.max_new_tokens

    def shard(x, *axes):
        return constrain(x, logical_sharding(mesh, rules, axes, x.shape))

    features = None
    if chunks is not None:
        chunks = {k: shard(v, "batch") for k, v in chunks.items()}
        k = chunks["patches"].shape[0]
        shards = axis_size(mesh, logical_sharding(mesh, rules, ("batch",), (k,)).spec[0])
        features = vision_features(model, chunks, feature_index, shards)
    hidden, cache = prefill(model, input_ids, positions, attention_mask, features, g, m)
    cache = cache.replace(
        prompt_k=shard(cache.prompt_k, None, "batch", "kv_heads"),
        prompt_v=shard(cache.prompt_v, None, "batch", "kv_heads"),
        sample_k=shard(cache.sample_k, None, "batch", "kv_heads"),
        sample_v=shard(cache.sample_v, None, "batch", "kv_heads"),
    )
    if cache.conv is not None:
        cache = cache.replace(
            conv=shard(cache.conv, None, "batch"), state=shard(cache.state, None, "batch")
        )
    n_valid = attention_mask.sum(axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(hidden, (n_valid - 1)[:, None, None], axis=1)[:, 0]
    first_logits = jnp.repeat(model.logits(last), g, axis=0)  # [R, vocab]
    base_position = rope_deltas + n_valid  # [P]: position of the first completion token
    slot_prompt = jnp.repeat(jnp.arange(p), g)
    slot_index = jnp.tile(jnp.arange(g), p)
    keys = sampling.sample_keys(seed, prompt_seeds, slot_prompt, slot_index)
    stop_ids = jnp.asarray(static.stop_ids if static.stop_ids else (-1,), jnp.int32)
    rows = PartitionSpec(logical_sharding(mesh, rules, ("batch",), (r,)).spec[0])

    def choose(logits, step):
        """Tokens and log-probs of one step, each batch shard sampling its own rows (top-k has
        no batch partitioning on every backend; shard_map keeps it from gathering all rows)."""

        def local(keys, logits, temperature, top_p, step):
            tokens = sampling.sample_tokens(
                sampling.step_keys(keys, step),
                logits,
                temperature=temperature,
                top_k=static.top_k,
                top_p=top_p,
                use_top_p=static.use_top_p,
                greedy=static.greedy,
                suppress=static.stop_ids if static.min_new_tokens > 0 else (),
                suppress_active=step < static.min_new_tokens,
            )
            return tokens, sampling.token_logprobs(logits, tokens, temperature)

        scalar = PartitionSpec()
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(rows, PartitionSpec(rows[0], None), scalar, scalar, scalar),
            out_specs=(rows, rows),
        )(keys, logits, temperature, top_p, jnp.asarray(step, jnp.int32))

    def record(carry, step, token, logp):
        live = ~carry["done"]
        token = jnp.where(live, token, static.pad_id)
        stop = live & jnp.isin(token, stop_ids)
        return {
            **carry,
            "step": step + 1,
            "last": token,
            "tokens": carry["tokens"].at[:, step].set(token),
            "logprobs": carry["logprobs"].at[:, step].set(jnp.where(live, logp, 0.0)),
            "lengths": carry["lengths"] + live.astype(jnp.int32),
            "done": carry["done"] | stop,
            "stopped": carry["stopped"] | stop,
        }

    active = sample_active.reshape(r)
    carry = {
        "step": jnp.asarray(0, jnp.int32),
        "cache": cache,
        "last": jnp.zeros((r,), jnp.int32),
        "tokens": shard(jnp.full((r, m), static.pad_id, jnp.int32), "batch"),
        "logprobs": shard(jnp.zeros((r, m), jnp.float32), "batch"),
        "lengths": shard(jnp.zeros((r,), jnp.int32), "batch"),
        "done": ~active,
        "stopped": jnp.zeros((r,), bool),
    }
    token, logp = choose(first_logits, 0)
    carry = record(carry, 0, token, logp)

    def cond(c):
        return (c["step"] < m) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]  # feeds the token sampled at step - 1 into completion slot step - 1
        logits, new_cache = decode_step(
            model, c["cache"], c["last"].reshape(p, g), base_position + step - 1, step - 1
        )
        token, logp = choose(logits.reshape(r, -1), step)
        return record({**c, "cache": new_cache}, step, token, logp)

    carry = jax.lax.while_loop(cond, body, carry)
    finish = jnp.where(
        carry["stopped"], FINISH_STOP, jnp.where(active, FINISH_LENGTH, FINISH_NONE)
    ).astype(jnp.int32)
    return {
        "tokens": carry["tokens"],
        "logprobs": carry["logprobs"],
        "mask": jnp.arange(m)[None, :] < carry["lengths"][:, None],
        "lengths": carry["lengths"],
        "finish_reason": finish,
        "prompt_lengths": jnp.repeat(n_valid, g),
        "num_steps": carry["step"],
    }
