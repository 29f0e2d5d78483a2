"""Every runnable example in the package's docstrings runs and prints what it says.

The examples are the first thing a newcomer copies (``>>>`` lines in module, class and function
docstrings); this runs them all with :mod:`doctest`, one test per module, so an example that no
longer matches the code fails here instead of in a user's session.
"""

import doctest
import importlib
import pkgutil

import pytest

import ase_eqgnn


def modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(ase_eqgnn.__path__, prefix="ase_eqgnn."):
        spec = importlib.util.find_spec(info.name)
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as f:
                if ">>> " in f.read():
                    names.append(info.name)
    return sorted(names)


MODULES = modules_with_examples()


def test_the_package_has_examples():
    assert len(MODULES) >= 30, MODULES  # guards the discovery above against finding nothing


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
