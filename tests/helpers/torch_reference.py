"""The PyTorch reference stack (torch, diffusers, transformers) that the parity tests compare against.

A test that needs it carries `needs_torch` (a whole module: ``pytestmark = needs_torch``) and imports the
stack under ``if HAVE_TORCH:``. Where the stack is not installed (`make test-latest`: Python 3.12 with the
newest JAX and no torch wheel), those tests skip with one stated reason and every other test still runs.
"""

import importlib.util

import pytest

HAVE_TORCH = all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))

needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="needs the PyTorch reference (torch, diffusers, transformers), which is not installed"
)
