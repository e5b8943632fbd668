"""The jitted training pieces: completion log-probs, exact micro-batch accumulation, the update
that skips non-finite gradients, frozen parameters, and the 8-device step."""

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from model_fixtures import tiny_checkpoint, tiny_port

from configs import seed_bench_r1, video_r1, videochat_r1
from jaxvrl import steps
from model import parity
from model.hf import load_pretrained
from model.packing import pack_vision
from model.qwen2_vl import Embedded
from model.rope import rope_index
from model.sharding import DEFAULT_RULES, shard_model

# Float32 throughout; accumulation and sharding only change summation order.
TOLERANCE = 1e-5


def _rl_batch(model, seed=0):
    """Two prompts (an image row and a video row, right-padded) and two completions each."""
    cfg = model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")
    arrays = parity.port_arrays(cfg, inp)
    rng = np.random.default_rng(seed)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    return inp, {
        "prompt_ids": inp.input_ids.astype(np.int32),
        "prompt_mask": inp.attention_mask.astype(bool),
        "prompt_positions": arrays["positions"],
        "rope_deltas": arrays["deltas"],
        "vision": arrays["vision"],
        "sample_to_prompt": np.array([0, 0, 1, 1], np.int32),
        "completion_ids": rng.integers(10, cfg.text.vocab_size, (4, 5)).astype(np.int32),
        "completion_mask": mask,
        "advantages": np.array([1.0, -1.0, 0.5, -0.5], np.float32),
    }


# Qwen3.5's log-probs: test_shared_prompt_pass_has_the_gradient_of_the_concatenated_forward.
@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen3_vl"])
def test_completion_logprobs_equal_a_full_forward_of_prompt_and_completion(generation):
    model = tiny_port(generation)
    cfg = model.config
    inp, batch = _rl_batch(model)
    got = np.asarray(steps.completion_logprobs(model, batch)["logp"])
    for s in range(4):
        row = batch["sample_to_prompt"][s]
        n = int(inp.attention_mask[row].sum())
        ids = np.concatenate([inp.input_ids[row, :n], batch["completion_ids"][s]])[None]
        kind, grid, patches = inp.items[row]
        grids = np.array([grid])
        pos, _ = rope_index(
            ids, None, cfg, grids if kind == "image" else None, grids if kind == "video" else None
        )
        vision = pack_vision([patches], grids, cfg.vision)
        logits = model.logits(model(ids, pos, np.ones_like(ids, bool), vision))[0]
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        expected = logp[n - 1 + np.arange(5), batch["completion_ids"][s]]
        valid = batch["completion_mask"][s]
        np.testing.assert_allclose(got[s][valid], expected[valid], atol=TOLERANCE, rtol=0)


def _concatenated_logprobs(model, batch):
    """The reference formulation: every completion appended to a copy of its padded prompt and
    the whole sequence run through the decoder."""
    s2p = batch["sample_to_prompt"]
    lp, lc = batch["prompt_mask"].shape[1], batch["completion_mask"].shape[1]
    prompt = model.embed(batch["prompt_ids"], batch["vision"])
    completion = model.embed(batch["completion_ids"])
    if isinstance(prompt, Embedded):  # Qwen3-VL: DeepStack adds at the prompts' vision tokens
        deep = prompt.deepstack[:, s2p]
        deep = jnp.concatenate([deep, jnp.zeros((deep.shape[0], *completion.shape))], axis=2)
        x = Embedded(jnp.concatenate([prompt.x[s2p], completion], axis=1), deep)
    else:
        x = jnp.concatenate([prompt[s2p], completion], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"][s2p], batch["completion_mask"]], axis=1)
    prompt_len = batch["prompt_mask"].sum(axis=1)[s2p]
    start = (batch["rope_deltas"][s2p] + prompt_len)[:, None] + jnp.arange(lc)[None, :]
    positions = jnp.concatenate(
        [batch["prompt_positions"][:, s2p], jnp.broadcast_to(start, (3, *start.shape))], axis=2
    )
    hidden = model.hidden_states(x, positions, mask)
    source = jnp.where(
        jnp.arange(lc)[None, :] == 0, (prompt_len - 1)[:, None], lp + jnp.arange(lc) - 1
    )
    picked = jnp.take_along_axis(hidden, source[..., None], axis=1)
    return model.token_logprobs(picked, batch["completion_ids"])


@pytest.mark.parametrize(
    ("generation", "remat"),
    # Rematerialised layers on the Qwen3 kinds only (DeepStack additions, DeltaNet states):
    # test_model_stack checks a rematerialised Qwen2.5-VL decoder's gradient.
    [("qwen2_vl", False), ("qwen3_vl", True), ("qwen3_5", True)],
)
def test_shared_prompt_pass_has_the_gradient_of_the_concatenated_forward(generation, remat):
    """The prompt run once for its completions gives the log-probs and the parameter gradient of
    running every prompt + completion (float32, 1e-5: only summation order differs); Qwen3-VL's
    DeepStack mergers get their gradient through the prompts. Qwen3.5: the reference runs each
    completion after its padded prompt, so its DeltaNet layers must skip the padding in between
    (a state carried from the prompt's last valid token)."""
    model = tiny_port(generation)  # a fresh copy
    model.remat = remat
    _, batch = _rl_batch(model)
    weights = jnp.asarray(batch["completion_mask"], jnp.float32) * batch["advantages"][:, None]
    graphdef, params = nnx.split(model)

    def objective(params, fn):
        return jnp.sum(fn(nnx.merge(graphdef, params), batch) * weights)

    shared = lambda m, b: steps.completion_logprobs(m, b)["logp"]  # noqa: E731
    value_a, grad_a = jax.value_and_grad(objective)(params, shared)
    value_b, grad_b = jax.value_and_grad(objective)(params, _concatenated_logprobs)
    np.testing.assert_allclose(value_a, value_b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def _split(batch, rows):
    """The micro-batch of prompt `rows` with their completions (vision of those rows only)."""
    return batch | {
        "prompt_ids": batch["prompt_ids"][rows],
        "prompt_mask": batch["prompt_mask"][rows],
        "prompt_positions": batch["prompt_positions"][:, rows],
        "rope_deltas": batch["rope_deltas"][rows],
    }


def _stack(batches):
    return jax.tree.map(lambda *x: np.stack(x), *batches)


def _step(model, settings, stacked, learning_rate=1e-2, **opt):
    graphdef, params = nnx.split(model)
    tx, _ = steps.make_optimizer(learning_rate=learning_rate, total_steps=10, **opt)
    fn = jax.jit(functools.partial(steps.train_step, graphdef, tx=tx, settings=settings))
    return fn(params, tx.init(params), stacked)


def test_two_micro_batches_give_exactly_the_one_batch_update():
    model = tiny_port("qwen2_vl")  # a fresh copy
    # Rematerialised layers inside the scan over micro-batches (as the recipes run); without
    # remat the accumulation is the same code (test_model_stack compares remat's gradient).
    model.remat = True
    cfg = model.config
    inp, batch = _rl_batch(model)
    settings = steps.LossSettings(aggregation="token_mean")
    # Adam's first step moves each parameter by lr * g / (|g| + eps): for the tiny gradients of
    # rarely used parameters (~1e-6) the default eps 1e-8 turns float32 summation-order noise
    # (~1e-9) into differences of ~1e-5. eps 1e-4 bounds that amplification by lr / eps = 100,
    # so the comparison tests the accumulation and not the conditioning of the optimizer.
    opt = {"eps": 1e-4}
    one_params, _, one = _step(model, settings, _stack([batch]), **opt)
    # The same four completions as two micro-batches of one prompt each.
    halves = []
    for row in range(2):
        kind, grid, patches = inp.items[row]
        sub = _split(batch, [row]) | {
            "vision": pack_vision([patches], np.array([grid]), cfg.vision, num_patches=240),
            "sample_to_prompt": np.zeros(2, np.int32),
        }
        sel = batch["sample_to_prompt"] == row
        for key in ("completion_ids", "completion_mask", "advantages"):
            sub[key] = batch[key][sel]
        halves.append(sub)
    two_params, _, two = _step(model, settings, _stack(halves), **opt)
    np.testing.assert_allclose(two["loss"], one["loss"], atol=TOLERANCE)
    np.testing.assert_allclose(two["grad_norm"], one["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(two_params), jax.tree.leaves(one_params), strict=True):
        np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=0)


def test_non_finite_gradient_skips_the_update_and_is_counted():
    model = tiny_port("qwen2_vl")
    _, batch = _rl_batch(model)
    batch["advantages"] = np.array([np.nan, 1.0, 1.0, 1.0], np.float32)
    params_before = nnx.state(model)
    params, opt_state, out = _step(model, steps.LossSettings(), _stack([batch]))
    assert out["skipped"] == 1.0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_before), strict=True):
        np.testing.assert_array_equal(a, b)
    # The optimizer state is untouched too: its step count is still 0, its moments finite.
    leaves = jax.tree.leaves(opt_state)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert all(int(x) == 0 for x in leaves if np.asarray(x).dtype == np.int32)


def test_frozen_vision_tower_gets_no_update():
    model = tiny_port("qwen2_vl")
    _, batch = _rl_batch(model)
    before = nnx.state(model)
    params, _, out = _step(
        model,
        steps.LossSettings(),
        _stack([batch]),
        freeze=lambda path: path[:1] == ("visual",),
        params=before,
    )
    assert out["skipped"] == 0.0
    np.testing.assert_array_equal(
        params["visual"]["patch_embed"]["kernel"][...],
        before["visual"]["patch_embed"]["kernel"][...],
    )
    changed = params["layers"]["mlp"]["up_proj"]["kernel"][...]
    assert np.abs(changed - before["layers"]["mlp"]["up_proj"]["kernel"][...]).max() > 0


def test_sft_loss_counts_only_target_tokens():
    model = tiny_port("qwen2_vl")
    ids = np.arange(20, 44, dtype=np.int32).reshape(2, 12)
    mask = np.ones_like(ids, bool)
    loss_mask = np.zeros_like(ids)
    loss_mask[:, 8:] = 1  # the last four tokens are the target
    pos = np.broadcast_to(np.arange(12, dtype=np.int32), (3, 2, 12))
    batch = {"input_ids": ids, "attention_mask": mask, "positions": pos, "loss_mask": loss_mask}
    out = steps.sft_micro_batch_loss(model, batch, steps.LossSettings(kind="sft"))
    logp = jax.nn.log_softmax(model.logits(model(ids, pos, mask)), axis=-1)
    targets = np.asarray(logp)[:, 7:11][np.arange(2)[:, None], np.arange(4)[None], ids[:, 8:12]]
    np.testing.assert_allclose(out.total, -targets.sum(), rtol=1e-5)
    assert float(out.denominator) == 8.0
    with_prompt = steps.sft_micro_batch_loss(
        model, batch, steps.LossSettings(kind="sft", train_on_prompt=True)
    )
    assert float(with_prompt.denominator) == 2 * 11  # every next-token target of each row


def test_train_step_on_eight_devices_equals_one_device():
    model = tiny_port("qwen2_5_vl")
    _, batch = _rl_batch(model)
    batch = _stack([batch])
    settings = steps.LossSettings(beta=0.0)
    # Adam's first update is about lr * sign(gradient): a gradient that rounds differently near
    # zero moves by up to lr, so a small lr keeps parameter differences at rounding level.
    expected_params, _, expected = _step(model, settings, batch, learning_rate=1e-4)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = tiny_port("qwen2_5_vl")  # a fresh copy to shard
    shard_model(sharded, mesh, DEFAULT_RULES)
    put = {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec())) for k, v in batch.items()}
    put["completion_ids"] = jax.device_put(
        batch["completion_ids"], NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp")))
    )
    params, _, out = _step(sharded, settings, put, learning_rate=1e-4)
    assert len(params["layers"]["mlp"]["up_proj"]["kernel"][...].sharding.device_set) == 8
    np.testing.assert_allclose(out["loss"], expected["loss"], atol=TOLERANCE)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOLERANCE, rtol=0)


def test_optimizer_state_has_the_parameters_shardings_and_step_two_reuses_step_one():
    model = tiny_port("qwen2_vl")  # a fresh copy: the step donates its inputs
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
    shard_model(model, mesh, DEFAULT_RULES)
    graphdef, params = nnx.split(model)
    tx, _ = steps.make_optimizer(learning_rate=1e-4, total_steps=10)
    opt_state = steps.init_optimizer_state(tx, params)
    adam = opt_state[-1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for moments in (adam.mu, adam.nu):
        for m, p in zip(jax.tree.leaves(moments), jax.tree.leaves(params), strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, m.ndim)
    kernel = params["layers"]["mlp"]["up_proj"]["kernel"][...]
    assert len(adam.mu["layers"]["mlp"]["up_proj"]["kernel"][...].sharding.device_set) == 8
    assert adam.mu["layers"]["mlp"]["up_proj"]["kernel"][...].sharding.shard_shape(
        kernel.shape
    ) == (kernel.shape[0], kernel.shape[1] // 4, kernel.shape[2])  # [layers, embed, mlp]
    assert adam.count.sharding.is_fully_replicated

    _, batch = _rl_batch(model)
    batch = {
        k: jax.device_put(v, NamedSharding(mesh, PartitionSpec()))
        for k, v in _stack([batch]).items()
    }
    step = steps.jit_train_step(graphdef, tx, steps.LossSettings(beta=0.0), params)
    for _ in range(3):
        params, opt_state, out = step(params, opt_state, batch)
    assert out["skipped"] == 0.0
    assert step._cache_size() == 1  # one compilation for three steps


@functools.cache
def _ten_small_steps(param_dtype: str, dtype: str):
    """Ten AdamW steps at lr 1e-6 (the recipes' optimizer) on one fixed RL batch: returns the
    parameter changes (float64), the final optimizer state and the model. Cached: the float32
    run is the reference of two tests (neither changes what it returns)."""
    model = load_pretrained(tiny_checkpoint("qwen2_vl")[0], param_dtype=param_dtype, dtype=dtype)
    _, batch = _rl_batch(model)
    graphdef, params = nnx.split(model)
    optim = video_r1.get_config().optim
    tx, _ = steps.make_optimizer(
        learning_rate=1e-6,
        total_steps=10,
        schedule="constant",
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
    )
    opt_state = steps.init_optimizer_state(tx, params)
    step = steps.jit_train_step(graphdef, tx, steps.LossSettings(beta=0.0), params)
    start = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    for _ in range(10):
        params, opt_state, out = step(params, opt_state, _stack([batch]))
        assert out["skipped"] == 0.0
    change = [
        np.asarray(x, np.float64) - s for x, s in zip(jax.tree.leaves(params), start, strict=True)
    ]
    return np.concatenate([c.ravel() for c in change]), opt_state, model


def test_recipe_mixed_precision_updates_weights_as_float32_training_does():
    """The recipes' float32 master weights with bfloat16 compute move the weights as float32
    training does. Adam divides each gradient by its own magnitude, so every weight moves about
    lr per step whatever its gradient's size; bfloat16 matmuls perturb gradients by ~2^-8
    relative, which flips the direction only of the smallest ones. Hence the tolerance: the
    10-step change agrees within 15% in norm (measured 7.8%) and in direction (cosine > 0.99,
    measured 0.997)."""
    recipe = video_r1.get_config().model
    assert (recipe.param_dtype, recipe.dtype) == ("float32", "bfloat16")
    for make in (videochat_r1.get_config, seed_bench_r1.get_config):
        assert (make().model.param_dtype, make().model.dtype) == ("float32", "bfloat16")
    reference, _, _ = _ten_small_steps("float32", "float32")
    mixed, opt_state, _ = _ten_small_steps(recipe.param_dtype, recipe.dtype)
    assert {str(x.dtype) for x in jax.tree.leaves(opt_state)} == {"float32", "int32"}
    assert np.abs(reference).mean() > 5e-6  # ~lr per step: the weights did move
    assert np.linalg.norm(mixed - reference) < 0.15 * np.linalg.norm(reference)
    cosine = mixed @ reference / (np.linalg.norm(mixed) * np.linalg.norm(reference))
    assert cosine > 0.99
    assert abs(np.mean(mixed != 0) - np.mean(reference != 0)) < 0.01


def test_bfloat16_weights_round_small_updates_away():
    """Why the recipes keep float32 master weights: with bfloat16 parameters a 1e-6 update of a
    weight of ~0.02 (resolution 2^-13 ~ 1.2e-4 there) rounds to nothing, so ten steps leave
    nearly every weight where it was (only those near zero, such as zero-initialised biases,
    move); in float32 over 90% of them move."""
    reference, _, _ = _ten_small_steps("float32", "float32")
    bf16, _, _ = _ten_small_steps("bfloat16", "bfloat16")
    assert np.mean(reference != 0) > 0.9
    assert np.mean(bf16 != 0) < 0.05
    assert np.linalg.norm(bf16 - reference) > 0.9 * np.linalg.norm(reference)


def _primitives(jaxpr, name):
    """Every equation of primitive `name` in a closed jaxpr, sub-jaxprs (scan, checkpoint,
    pjit) included."""
    found = []
    for eqn in jaxpr.jaxpr.eqns if hasattr(jaxpr, "jaxpr") else jaxpr.eqns:
        if eqn.primitive.name == name:
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _primitives(sub, name)
    return found


def test_bfloat16_compute_runs_every_matmul_in_bfloat16_and_softmaxes_in_float32():
    """With float32 weights and bfloat16 compute every forward matmul of the vision tower, the
    decoder and the log-probs takes bfloat16 operands (attention scores and logits accumulate in
    float32); M-RoPE's position angles (a product with a [3, head_dim / 2] one-hot) stay float32.
    In the backward pass the float32 cotangents of scores and logits meet bfloat16 operands; no
    weight matmul runs in float32. Attention softmaxes and the log-sum-exp exponentiate float32
    (the GELU's derivative may exponentiate bfloat16)."""
    model = load_pretrained(
        tiny_checkpoint("qwen2_5_vl")[0], param_dtype="float32", dtype="bfloat16"
    )
    _, batch = _rl_batch(model)
    graphdef, params = nnx.split(model)
    angles = (3, model.config.text.head_dim // 2)

    def loss(params):
        out = steps.micro_batch_loss(nnx.merge(graphdef, params), batch, steps.LossSettings())
        return out.total

    def dtypes(eqn):
        return [str(v.aval.dtype) for v in eqn.invars]

    forward = [
        e
        for e in _primitives(jax.make_jaxpr(loss)(params), "dot_general")
        if e.invars[0].aval.shape != angles
    ]
    assert len(forward) > 30
    assert all(dtypes(e) == ["bfloat16", "bfloat16"] for e in forward)
    both = jax.make_jaxpr(jax.value_and_grad(loss))(params)
    dots = [e for e in _primitives(both, "dot_general") if e.invars[0].aval.shape != angles]
    assert len(dots) > 2 * len(forward)
    assert all("bfloat16" in dtypes(e) for e in dots)
    vocab = model.config.text.vocab_size
    softmaxes = [  # over attention scores [..., queries, keys] or over the vocabulary
        e
        for e in _primitives(both, "exp")
        if e.outvars[0].aval.ndim >= 3 or e.outvars[0].aval.shape[-1] == vocab
    ]
    assert len(softmaxes) > 10
    assert all(str(e.outvars[0].aval.dtype) == "float32" for e in softmaxes)
    value, grads = jax.eval_shape(jax.value_and_grad(loss), params)
    assert value.dtype == jnp.float32
    assert {str(x.dtype) for x in jax.tree.leaves(grads)} == {"float32"}


def test_reference_copy_is_held_in_the_compute_dtype():
    model = tiny_port("qwen2_vl")
    params = nnx.state(model)
    ref = steps.reference_parameters(params, "bfloat16")
    assert {str(x.dtype) for x in jax.tree.leaves(ref)} == {"bfloat16"}
    kernel = params["layers"]["mlp"]["up_proj"]["kernel"][...]
    np.testing.assert_array_equal(
        ref["layers"]["mlp"]["up_proj"]["kernel"][...], kernel.astype(jnp.bfloat16)
    )
    same = steps.reference_parameters(params, "float32")  # float32 compute: an exact copy
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
