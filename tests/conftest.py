"""Test set-up: eight simulated CPU devices for the sharding tests, quick CPU compiles
(demo_fixtures.QUICK_COMPILE), float32 matmuls everywhere, and the small synthetic demo set the
end-to-end trainer tests share."""

import os

from demo_fixtures import QUICK_COMPILE  # noqa: E402

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {QUICK_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
