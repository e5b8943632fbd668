"""Text overlap measures of Video-R1's accuracy rules: word error rate and ROUGE F1.

Word sequences are cut at `MAX_WORDS`, so the edit-distance and LCS work stays bounded on
hostile text.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np

from jaxvrl.rewards.answer_parsing import MAX_WORDS


def _word_ids(words_a: list[str], words_b: list[str]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[str, int] = {}
    a = np.array([vocab.setdefault(w, len(vocab)) for w in words_a], np.int64)
    b = np.array([vocab.setdefault(w, len(vocab)) for w in words_b], np.int64)
    return a, b


def _edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance of two id sequences, one numpy row per element of `a`."""
    if len(a) == 0 or len(b) == 0:
        return max(len(a), len(b))
    cols = np.arange(len(b) + 1)
    prev = cols.copy()
    for i, token in enumerate(a, start=1):
        row = np.empty_like(prev)
        row[0] = i
        row[1:] = np.minimum(prev[:-1] + (b != token), prev[1:] + 1)
        # Insertions chain left to right: row[j] = min_k (row[k] + j - k), a running minimum.
        prev = np.minimum.accumulate(row - cols) + cols
    return int(prev[-1])


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Video-R1's WER: word-level edit distance / max(1, number of reference words)."""
    ref, hyp = reference.split()[:MAX_WORDS], hypothesis.split()[:MAX_WORDS]
    return _edit_distance(*_word_ids(ref, hyp)) / max(1, len(ref))


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


@functools.cache
def _porter():
    # rouge_score's own stemmer (nltk's PorterStemmer, default mode), as Video-R1's
    # `RougeScorer(..., use_stemmer=True)` uses it (Video-R1 src/r1-v/src/open_r1/grpo.py:103).
    from nltk.stem import porter

    return porter.PorterStemmer()


@functools.lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    return _porter().stem(word) if len(word) > 3 else word  # rouge_score stems words > 3 chars


def _rouge_tokens(text: str, stem: bool = True) -> list[str]:
    """rouge_score's tokens: lower-cased alphanumeric runs, words over 3 characters stemmed."""
    words = _ROUGE_TOKEN.findall(text.lower())[:MAX_WORDS]
    return [t for t in map(_stem, words) if _ROUGE_TOKEN.fullmatch(t)] if stem else words


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def _ngram_f1(ref: list[str], pred: list[str], n: int) -> float:
    ref_grams = Counter(zip(*(ref[k:] for k in range(n)), strict=False))
    pred_grams = Counter(zip(*(pred[k:] for k in range(n)), strict=False))
    overlap = sum((ref_grams & pred_grams).values())
    return _f1(overlap, sum(pred_grams.values()), sum(ref_grams.values()))


def _lcs_length(a: np.ndarray, b: np.ndarray) -> int:
    """Longest common subsequence length, one numpy row per element of `a`."""
    if len(a) == 0 or len(b) == 0:
        return 0
    prev = np.zeros(len(b) + 1, np.int64)
    for token in a:
        row = np.zeros_like(prev)
        row[1:] = np.maximum(prev[:-1] + (b == token), prev[1:])
        prev = np.maximum.accumulate(row)
    return int(prev[-1])


def rouge_f1s(reference: str, prediction: str, stem: bool = True) -> tuple[float, float, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 (Lin 2004) as rouge_score computes them: lower-cased
    alphanumeric words, Porter-stemmed when `stem` (Video-R1's `use_stemmer=True`)."""
    ref, pred = _rouge_tokens(reference, stem), _rouge_tokens(prediction, stem)
    lcs = _lcs_length(*_word_ids(ref, pred))
    return _ngram_f1(ref, pred, 1), _ngram_f1(ref, pred, 2), _f1(lcs, len(pred), len(ref))
