"""Records, media decoding, vision inputs, prompts and the Grain pipeline."""
