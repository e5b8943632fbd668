"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the vision tower, vision features placed at the image/video
pad tokens (Qwen3-VL: and its DeepStack features added after the first decoder layers), the M-RoPE
decoder, and the interface the RL library uses (forward, prefill/decode, log-probs).

    model = Qwen2VL(config, rngs=nnx.Rngs(0))
    hidden = model(input_ids, positions, attention_mask, vision)      # [batch, seq, hidden]
    logp = model.token_logprobs(hidden, targets)                      # chunked, no full logits
    hidden, cache = model.prefill(input_ids, positions, attention_mask, vision, cache)
    hidden, cache = model.decode(tokens, positions, cache)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from model import hybrid, stack
from model.config import ModelConfig
from model.flash import Mask
from model.layers import RMSNorm, dtype_of, normal_init
from model.logprobs import chunked_token_logprobs
from model.rope import mrope_cos_sin
from model.sharding import constrain, embedding_lookup
from model.text import DecoderLayer, KVCache, cache_mask, causal_mask
from model.vision import VisionTower


@struct.dataclass
class Embedded:
    """Input embeddings x [batch, seq, hidden] and what DeepStack adds to the outputs of the
    first decoder layers (Qwen3-VL): deepstack [k, batch, seq, hidden], layer i's addition at
    index i, zero at text tokens. The passes that take embeddings take either this or x alone."""

    x: jnp.ndarray
    deepstack: jnp.ndarray


def _unpack(x: jnp.ndarray | Embedded) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    return (x.x, x.deepstack) if isinstance(x, Embedded) else (x, None)


def _add_deepstack(x: jnp.ndarray, deepstack: jnp.ndarray | None, layer) -> jnp.ndarray:
    """x plus DeepStack's addition after decoder layer `layer` (a traced index in a scan: the
    addition of layers past the last is skipped by a select)."""
    if deepstack is None:
        return x
    k = deepstack.shape[0]
    extra = jax.lax.dynamic_index_in_dim(deepstack, jnp.minimum(layer, k - 1), keepdims=False)
    return jnp.where(layer < k, x + extra.astype(x.dtype), x)


class Qwen2VL(nnx.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        remat: bool = False,
        vision_remat: bool = False,
        remat_policy: str = "full",
        attention: str = "auto",
        scan_layers: bool = True,
    ):
        """remat / vision_remat: recompute each decoder layer's / vision block's activations in
        the backward pass, keeping what `remat_policy` (model.layers.REMAT_POLICIES) names.
        attention: the attention implementation of every layer and block (config
        `model.attention`, model.flash.IMPLEMENTATIONS or "auto"). scan_layers: the decoder
        layers and vision blocks as stacks run by a scan (model/stack.py; config
        `model.scan_layers`), else one copy of each in the program."""
        self.config = config
        t = config.text
        param_dtype, dtype = dtype_of(config.param_dtype), dtype_of(config.dtype)
        self.dtype = dtype
        self.visual = VisionTower(
            config.vision,
            param_dtype=param_dtype,
            dtype=dtype,
            remat=vision_remat,
            remat_policy=remat_policy,
            attention=attention,
            scan_blocks=scan_layers,
            rngs=rngs,
        )
        self.embed_tokens = nnx.Param(
            normal_init(t.initializer_range)(
                rngs.params(), (t.vocab_size, t.hidden_size), param_dtype
            ),
            axes=("vocab", "embed"),
        )
        layer_kwargs = dict(param_dtype=param_dtype, dtype=dtype, attention=attention, rngs=rngs)
        if t.is_hybrid:  # Qwen3.5: groups of DeltaNet and attention layers (model/hybrid.py)
            layers = hybrid.groups(t, **layer_kwargs)
        else:
            layers = [DecoderLayer(t, **layer_kwargs) for _ in range(t.num_layers)]
        self.layers = stack.stacked(layers) if scan_layers else nnx.List(layers)
        self.norm = RMSNorm(
            t.hidden_size, t.rms_norm_eps, param_dtype=param_dtype, offset=t.norm_offset
        )
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nnx.Param(
                normal_init(t.initializer_range)(
                    rngs.params(), (t.hidden_size, t.vocab_size), param_dtype
                ),
                axes=("embed", "vocab"),
            )
        )
        self.remat = remat
        self.remat_policy = remat_policy

    # --------------------------------------------------------------------------------------------
    # Embedding and vision features.

    def embed(self, input_ids: jnp.ndarray, vision: dict | None = None) -> jnp.ndarray | Embedded:
        """Token embeddings with the vision tower's features placed at the image/video pad
        tokens, in the order the pad tokens appear in the flattened batch. input_ids:
        [batch, seq]. `embed_with_features`'s result."""
        features = None if vision is None else self.visual(vision)
        return self.embed_with_features(input_ids, features)

    def embed_with_features(
        self, input_ids: jnp.ndarray, features: jnp.ndarray | None
    ) -> jnp.ndarray | Embedded:
        """Token embeddings with vision `features` [F, width] (the tower's output, computed
        elsewhere: e.g. in chunks) placed at the image/video pad tokens in flattened-batch order.
        input_ids: [batch, seq]. Returns [batch, seq, hidden]; with DeepStack features (Qwen3-VL:
        width (1 + k) x hidden) an Embedded holding them too."""
        x = embedding_lookup(self.embed_tokens[...], input_ids, self.dtype)
        if features is None:
            return x
        features = features.astype(self.dtype)
        cfg = self.config
        is_vision = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)
        order = jnp.cumsum(is_vision.reshape(-1)) - 1
        order = jnp.clip(order, 0, features.shape[0] - 1).reshape(input_ids.shape)
        # Whole on every device (a step's vision tokens, small beside the weights), so the rows
        # placed can take any layout; from features split along the embedding the partitioner
        # could only replicate the placed rows (Video-R1's SFT step on h100x8).
        features = constrain(features, (None, None))
        hidden = cfg.text.hidden_size
        # One gather of every width (DeepStack's columns too): its backward pass is one
        # scatter-add, not one per array placed.
        placed = features[order]  # [batch, seq, width]
        x = jnp.where(is_vision[..., None], placed[..., :hidden], x)
        k = cfg.vision.deepstack
        if not k:
            return x
        deep = jnp.where(is_vision[..., None], placed[..., hidden:], 0)
        deep = deep.reshape(*input_ids.shape, k, hidden).transpose(2, 0, 1, 3)
        return Embedded(x=x, deepstack=constrain(deep, (None, "batch", None, None)))

    def rope(self, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """M-RoPE cos, sin [batch, seq, rotary_dim] of positions [3, batch, seq]."""
        t = self.config.text
        return mrope_cos_sin(
            positions, t.rotary_dim, t.rope_theta, t.mrope_section, t.mrope_interleaved
        )

    def over_layers(self, body, carry, xs=None, *, remat: bool = False):
        """body(layer, carry, x) -> (carry, y) through the decoder layers in order, `x` each
        layer's slice of `xs` (arrays with a leading layer axis; None for none): a scan over the
        stack, or the unrolled loop. With `remat` each layer's activations are recomputed in the
        backward pass (the model's remat policy). Returns (carry, ys stacked, or None)."""
        policy = self.remat_policy if remat else None
        return stack.run(self.layers, body, carry, xs, remat_policy=policy)

    def _layers(self, x, cos, sin, mask, cache, deepstack=None, valid=None):
        """The decoder layers and the final norm; with a cache, each layer writes its keys and
        values at the cache's index; `deepstack` (Embedded) is added after the first layers;
        `valid` [batch, L]: the tokens a hybrid decoder's DeltaNet layers run over. Returns
        hidden states and the cache's new arrays ((keys, values); hybrid: and the states)."""
        remat = self.remat and cache is None
        if self.config.text.is_hybrid:
            x, arrays = hybrid.run_layers(self, x, cos, sin, mask, valid, cache, remat)
            return self.norm(x), arrays

        def body(layer, carry, i):
            x, kv = carry
            kv_layer = None if kv is None else (*kv, i)
            index = None if cache is None else cache.index
            x, kv_layer = layer(x, cos, sin, mask, kv_layer, index)
            x = _add_deepstack(x, deepstack, i)
            return (x, None if kv_layer is None else kv_layer[:2]), None

        kv = None if cache is None else (cache.k, cache.v)
        layers = jnp.arange(self.config.text.num_layers)
        (x, kv), _ = self.over_layers(body, (x, kv), layers, remat=remat)
        return self.norm(x), kv

    # --------------------------------------------------------------------------------------------
    # Forward passes.

    def __call__(
        self,
        input_ids: jnp.ndarray,
        positions: jnp.ndarray,
        attention_mask: jnp.ndarray,
        vision: dict | None = None,
    ) -> jnp.ndarray:
        """Full causal forward. input_ids, attention_mask: [batch, seq]; positions: [3, batch,
        seq] (model/rope.py `rope_index`). Returns final hidden states [batch, seq, hidden]."""
        return self.hidden_states(self.embed(input_ids, vision), positions, attention_mask)

    def hidden_states(
        self, x: jnp.ndarray | Embedded, positions: jnp.ndarray, attention_mask: jnp.ndarray
    ) -> jnp.ndarray:
        """Full causal forward from input embeddings x [batch, seq, hidden] or an Embedded (e.g.
        prompt embeddings computed once and shared by several completions)."""
        x, deepstack = _unpack(x)
        cos, sin = self.rope(positions)
        mask = causal_mask(attention_mask)
        hidden, _ = self._layers(x, cos, sin, mask, None, deepstack, attention_mask.astype(bool))
        return hidden

    def shared_prefix_hidden_states(
        self,
        prompt_x: jnp.ndarray | Embedded,
        prompt_positions: jnp.ndarray,
        prompt_mask: jnp.ndarray,
        completion_x: jnp.ndarray,
        completion_positions: jnp.ndarray,
        completion_mask: jnp.ndarray,
        sample_to_prompt: jnp.ndarray,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Causal forward of S completions that continue P shared prompts, each prompt run once
        (the G samples of a GRPO group share theirs). prompt_x: [P, Lp, hidden] (right-padded,
        prompt_mask [P, Lp]); completion_x: [S, Lc, hidden] (completion_mask [S, Lc]) after
        prompt `sample_to_prompt[s]`; positions [3, ., .]. Returns final hidden states of the
        prompts [P, Lp, hidden] and of the completions [S, Lc, hidden], equal to a forward over
        every concatenated (padded) prompt + completion. DeepStack (an Embedded prompt_x) adds
        to the prompts only: completions hold no vision tokens."""
        prompt_x, deepstack = _unpack(prompt_x)
        prompt_mask = prompt_mask.astype(bool)
        completion_mask = completion_mask.astype(bool)
        rope_p = self.rope(prompt_positions)
        rope_c = self.rope(completion_positions)
        mask_p = causal_mask(prompt_mask)
        # A completion's queries see their prompt's valid keys (positions 0: before every
        # query) and their own causally (positions Lp + j).
        samples, lc = completion_mask.shape
        lp = prompt_mask.shape[1]
        own = jnp.broadcast_to(lp + jnp.arange(lc), (samples, lc))
        mask_c = Mask(
            jnp.concatenate([prompt_mask[sample_to_prompt], completion_mask], axis=1),
            q_pos=own,
            kv_pos=jnp.concatenate([jnp.zeros((samples, lp), own.dtype), own], axis=1),
            causal_offset=lp,
        )

        if self.config.text.is_hybrid:
            xp, xc = hybrid.run_shared_prefix(
                self, prompt_x, completion_x, rope_p, rope_c, mask_p, mask_c,
                prompt_mask, completion_mask, sample_to_prompt,
            )  # fmt: skip
            return self.norm(xp), self.norm(xc)

        def body(layer, carry, i):
            xp, xc = layer.shared_prefix(*carry, rope_p, rope_c, mask_p, mask_c, sample_to_prompt)
            return (_add_deepstack(xp, deepstack, i), xc), None

        # The layer index only places DeepStack's additions: without them the scan takes none.
        layers = None if deepstack is None else jnp.arange(self.config.text.num_layers)
        (xp, xc), _ = self.over_layers(body, (prompt_x, completion_x), layers, remat=self.remat)
        return self.norm(xp), self.norm(xc)

    def prefill(
        self,
        input_ids: jnp.ndarray,
        positions: jnp.ndarray,
        attention_mask: jnp.ndarray,
        vision: dict | None,
        cache: KVCache,
    ) -> tuple[jnp.ndarray, KVCache]:
        """Writes a right-padded prompt into the cache at slots [index, index + seq).
        Returns hidden states [batch, seq, hidden] and the updated cache."""
        return self.prefill_embedded(
            self.embed(input_ids, vision), positions, attention_mask, cache
        )

    def prefill_embedded(
        self,
        x: jnp.ndarray | Embedded,
        positions: jnp.ndarray,
        attention_mask: jnp.ndarray,
        cache: KVCache,
    ) -> tuple[jnp.ndarray, KVCache]:
        """`prefill` from input embeddings x [batch, seq, hidden] or an Embedded (vision
        features already in place)."""
        x, deepstack = _unpack(x)
        return self._extend(x, positions, attention_mask.astype(bool), cache, deepstack)

    def decode(
        self, tokens: jnp.ndarray, positions: jnp.ndarray, cache: KVCache
    ) -> tuple[jnp.ndarray, KVCache]:
        """One (or a few) new tokens per sequence. tokens: [batch, n]; positions: [3, batch, n]
        (rope delta + position among valid tokens). Returns hidden [batch, n, hidden], cache."""
        x = self.embed(tokens)
        return self._extend(x, positions, jnp.ones(tokens.shape, bool), cache)

    def _extend(self, x, positions, new_valid, cache, deepstack=None):
        length = x.shape[1]
        valid = jax.lax.dynamic_update_slice(cache.valid, new_valid, (0, cache.index))
        mask = cache_mask(valid, cache.index, length)
        cos, sin = self.rope(positions)
        hidden, arrays = self._layers(x, cos, sin, mask, cache, deepstack, new_valid)
        kv = KVCache(k=arrays[0], v=arrays[1], valid=valid, index=cache.index + length)
        if isinstance(cache, hybrid.HybridCache):
            return hidden, hybrid.HybridCache(kv=kv, conv=arrays[2], state=arrays[3])
        return hidden, kv

    def init_cache(self, batch: int, slots: int) -> KVCache | hybrid.HybridCache:
        """An empty cache: keys and values of every layer (KVCache), or for a hybrid decoder
        those of its attention layers and its DeltaNet layers' states (HybridCache)."""
        if self.config.text.is_hybrid:
            return hybrid.HybridCache.create(self.config.text, batch, slots, self.dtype)
        return KVCache.create(self.config.text, batch, slots, self.dtype)

    # --------------------------------------------------------------------------------------------
    # Outputs.

    def lm_head_kernel(self) -> jnp.ndarray:
        """[hidden, vocab]; the transposed embedding when word embeddings are tied."""
        if self.lm_head is None:
            return self.embed_tokens[...].T
        return self.lm_head[...]

    def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """Full logits [..., vocab] in float32: for decoding and tests, never for training."""
        kernel = self.lm_head_kernel().astype(self.dtype)
        return jnp.dot(hidden.astype(self.dtype), kernel, preferred_element_type=jnp.float32)

    def token_logprobs(
        self,
        hidden: jnp.ndarray,
        targets: jnp.ndarray,
        *,
        chunk_size: int = 1024,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ):
        """log p(targets) [batch, seq] (and the entropy if asked), computed chunk by chunk so the
        [batch, seq, vocab] logits never exist."""
        return chunked_token_logprobs(
            hidden.astype(self.dtype),
            self.lm_head_kernel().astype(self.dtype),
            targets,
            chunk_size=chunk_size,
            temperature=temperature,
            with_entropy=with_entropy,
        )
