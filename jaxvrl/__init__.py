"""jaxvrl: GRPO / T-GRPO / SFT post-training for video vision-language models in JAX."""
