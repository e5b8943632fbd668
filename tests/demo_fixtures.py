"""The CPU demo shrunk to seconds, shared by the end-to-end trainer tests (test_train.py,
test_parallel_multihost.py): the small synthetic set conftest's `small_demo_set` builds, and the
overrides of a short run on it (each test adds its own steps, checkpoints and mesh), and the
environment those runs start in."""

import atexit
import os
import shutil
import tempfile

# The demo's synthetic set cut down: 8 training videos, 4 images, 4 held-out videos.
SMALL_SET = {"num_videos": 8, "num_images": 4, "num_eval_videos": 4}


def shrunk_demo(root: str, workdir: str, *extra: str) -> list[str]:
    """`python -m jaxvrl.train` flags: configs/demo.py on the small set in `root`, batches of 4
    prompts, G = 4 plus 2 shuffled-frame samples of up to 8 tokens, a KL term, no progress bar;
    then `extra`."""
    return [
        f"--config=configs/demo.py:{root}",
        f"--workdir={workdir}",
        *(f"--config.data.synthetic.{key}={value}" for key, value in SMALL_SET.items()),
        "--config.data.batch_size=4",
        "--config.rl.num_generations=4",
        "--config.rl.shuffled_generations=2",
        "--config.rl.max_completion_tokens=8",
        "--config.rl.beta=0.04",
        "--config.metrics.progress=false",
        *extra,
    ]


# XLA's CPU backend without LLVM's optimisation passes: the tests' programs are tiny, so compiling
# them dominates their time, and these passes take about a third of it (test_steps' two
# mixed-precision tests: 113 -> 73 CPU seconds). HLO passes, buffer assignment and the Eigen/oneDNN
# matmuls are unchanged, so the memory figures and the numerics the tests compare are too.
# conftest adds it to the test process's XLA_FLAGS; the subprocesses the tests start inherit it.
QUICK_COMPILE = "--xla_backend_optimization_level=0"

# JAX's persistent compilation cache for the trainer runs the tests start: the shrunk demo's runs
# compile the same programs (a restarted run all of them again), so every run after the first
# reads its executables back instead of compiling them. The test processes do not use it. One
# directory per test session: the first process to import this module (pytest, or the xdist
# controller) makes it and removes it at exit; the xdist workers inherit it through the
# environment, so runs in different workers share executables too.
_SHARED = "JAXVRL_TEST_COMPILE_CACHE"
if _SHARED in os.environ:
    COMPILE_CACHE = os.environ[_SHARED]
else:
    COMPILE_CACHE = os.environ[_SHARED] = tempfile.mkdtemp(prefix="jaxvrl_test_compile_cache_")
    atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m jaxvrl.train` run a test starts: this process's, with the
    shared compilation cache (every program cached, however quick its compile); then `extra`."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **extra,
    }
