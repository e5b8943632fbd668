"""Shared builders for the model tests: tiny transformers checkpoints and the port loaded."""

from __future__ import annotations

import functools
import tempfile

from model.hf import load_pretrained
from model.tiny import make_tiny_checkpoint


@functools.cache
def tiny_checkpoint(generation: str, tie: bool = False) -> tuple[str, object]:
    """(directory, torch model) of a tiny random checkpoint, built once per test process."""
    directory = tempfile.mkdtemp(prefix=f"jaxvrl_{generation}_{'tied' if tie else 'untied'}_")
    torch_model = make_tiny_checkpoint(directory, generation, tie_word_embeddings=tie, seed=1)
    return directory, torch_model


@functools.cache
def tiny_port(generation: str, tie: bool = False):
    directory, _ = tiny_checkpoint(generation, tie)
    return load_pretrained(directory)
