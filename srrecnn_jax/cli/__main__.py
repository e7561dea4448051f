"""``python -m srrecnn_jax.cli``: the ``srrecnn`` command."""

import sys

from srrecnn_jax.cli.main import main

sys.exit(main())
