"""The script ``accelerate launch foundation/train.py RECIPE [key=value ...]`` runs: the same as
``foundation train`` (same arguments, messages and exit codes).

Only a launch script: nothing imports it (an import-linter contract in pyproject.toml says so).  The
training loop is :mod:`foundation.engine.trainer`, the workflow :mod:`foundation.workflows.train`.
"""

from __future__ import annotations

if __name__ == "__main__":  # before torch is imported
    from foundation.core.openmp import default_wait_policy

    default_wait_policy()

import sys  # noqa: E402
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Hand the arguments to ``foundation train``."""
    from foundation.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
