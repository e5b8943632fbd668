"""Test set-up: eight simulated CPU devices for the sharding tests, quick CPU compiles
(demo_fixtures.QUICK_COMPILE), float32 matmuls everywhere, the small synthetic demo set the
end-to-end trainer tests share, the fit check's tiny model, and how pytest-xdist schedules the
files."""

import os

from demo_fixtures import QUICK_COMPILE

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {QUICK_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def small_demo_set(tmp_path_factory):
    """The demo's synthetic set shrunk to 8 training videos, 4 images and 4 held-out videos
    (the end-to-end trainer tests run the demo config on it)."""
    from demo_fixtures import SMALL_SET

    from configs import demo
    from jaxvrl.data import synthetic

    directory = str(tmp_path_factory.mktemp("demo_set"))
    config = demo.get_config(directory)
    config.data.synthetic.update(**SMALL_SET)
    synthetic.ensure_from_config(config)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A directory holding a tiny Qwen2.5-VL config.json: the model the fit check's tests
    (test_fit*.py) compile for, shared so that they can share its compiled reports."""
    from model.tiny import tiny_hf_config

    directory = tmp_path_factory.mktemp("tiny_fit")
    with open(directory / "config.json", "w") as f:
        json.dump(tiny_hf_config("qwen2_5_vl"), f)
    return str(directory)


# Under pytest-xdist (the README's `-n 2`; --dist=loadgroup in pyproject.toml) a group of tests runs
# whole in one worker: a test file's tests (they share module fixtures), and the fit check's files
# together (they read one compiled report, test_fit.tpu_rl_report). Groups start longest first,
# so that the last one to finish is short: the files with end-to-end runs, by their time on a
# 2-core VM (pytest --durations, 2026-12-05), then the rest in file order
# (--no-loadscope-reorder keeps this order; xdist's own puts the groups with most tests first).
LONGEST_FIRST = (
    "test_parallel_multihost",
    "fit",
    "test_train",
    "test_steps",
    "test_objectives_dapo",
    "test_parallel_mesh",
    "test_rollout_sampling",
    "test_data_pipeline",
)


def _group(item: pytest.Item) -> str:
    stem = item.path.stem
    return "fit" if stem.startswith("test_fit") else stem


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order within
