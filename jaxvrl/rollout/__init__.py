"""Sampling G completions per prompt for GRPO: the sampler (sampler.py) and its prompt rows
(prompt_batch.py), the one jitted program of vision, prefill and group decoding
(group_decode.py), the token-level sampling math (sampling.py) and the host-side repacking of
vision into chunks of whole temporal slices (vision_chunks.py)."""
