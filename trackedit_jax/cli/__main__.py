"""`python -m trackedit_jax.cli ...` is the `trackedit` command."""

import sys

from trackedit_jax.cli import console_main

sys.exit(console_main())
