"""Flax NNX port of Qwen2-VL and Qwen2.5-VL (no RL, no data files)."""
