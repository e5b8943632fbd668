"""Rule-based rewards by name: the registry (registry.py: `get`, `combine`, `register`) and the
rewards of each paper's released code, registered when this package is imported (video_r1.py,
videochat_r1.py, seed_bench_r1.py); answers parsed in answer_parsing.py, WER and ROUGE in
text_metrics.py."""

from jaxvrl.rewards import seed_bench_r1, video_r1, videochat_r1  # noqa: F401 - they register
