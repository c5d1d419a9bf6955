"""The closed-form baselines' shared entry point (``foundation.workflows.closed_form.main``, behind
``python -m foundation.workflows.linear`` / ``.srm``, which ``foundation bench`` launches)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tests.conftest import tiny_recipe_dict


@pytest.fixture
def recipe_path(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    return path


def _main(argv, run):
    from foundation.workflows.closed_form import main

    return main(argv, prog="baseline", description="a closed-form baseline", add_arguments=lambda p: None, run=run)


def test_an_error_prints_as_foundation_prints_it_and_traceback_adds_the_chain(recipe_path, capsys):
    """Plain ids, a hint when there is a cause to show, and ``--traceback`` for the chain — as ``foundation``
    does (this entry point printed the raw message, numpy reprs included, and had no way to the chain)."""
    from foundation.core.errors import DataError

    def run(recipe, args, progress):
        try:
            {}["img0046"]
        except KeyError as exc:
            raise DataError(f"sample {np.str_('img0046')!r} has no labels") from exc

    assert _main([str(recipe_path)], run) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "error: sample 'img0046' has no labels (rerun with --traceback for the full traceback)"

    assert _main([str(recipe_path), "--traceback"], run) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "The above exception was the direct cause of the following exception" in err
    assert err.splitlines()[-1] == "error: sample 'img0046' has no labels"


def test_the_exit_status_is_the_errors_own(recipe_path, capsys):
    """A busy run directory exits 75, which ``foundation bench`` retries; other errors exit 2."""
    from foundation.core.errors import BusyError

    def run(recipe, args, progress):
        raise BusyError("run directory runs/x is in use by process 123")

    assert _main([str(recipe_path)], run) == 75
    assert capsys.readouterr().err.splitlines() == ["error: run directory runs/x is in use by process 123"]
