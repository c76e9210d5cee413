"""Shared test set-up: 8 simulated host CPU devices, float32 matmuls, paths to real data.

XLA_FLAGS must be set before jax initialises its backend, so this runs at import time,
before any test module imports jax.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Parity tests compare against PyTorch in fp32; keep torch on the same two cores as XLA.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


_UNGROUPED: set[str] = set()  # tests marked xdist_group that pytest-xdist did not tag with their group


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, find the grouped tests that pytest-xdist failed to tag: a group shares one
    worker's module fixtures (a training run, one browser), and untagged its tests silently run on both
    workers, each building those fixtures. pytest 9.2 with pytest-xdist 3.8 is such a pair
    (pytest-dev/pytest-xdist#1386), hence the pin in pyproject.toml."""
    if getattr(config.option, "loadgroup", False):
        _UNGROUPED.update(i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid)


def pytest_runtest_setup(item):
    # fail before the fixtures are built (a raise at collection on a worker reaches the user as an
    # INTERNALERROR without its message)
    if item.nodeid in _UNGROUPED:
        pytest.fail(
            "pytest-xdist did not put this xdist_group test in its group; install the pytest that "
            "pyproject.toml allows (pytest-dev/pytest-xdist#1386)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real test data folder `../shared/data`; tests using it skip when a clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only present on project machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def windmill_dir(shared_data) -> pathlib.Path:
    return shared_data / "dycheck_paper_windmill"


@pytest.fixture(scope="session")
def sheep_video(shared_data) -> pathlib.Path:
    return shared_data / "videos" / "sheep.mp4"
