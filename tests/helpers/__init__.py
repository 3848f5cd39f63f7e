"""Helpers shared by the tests: tiny hand-built networks (`tests.helpers.networks`), small
options for the slow methods (`tests.helpers.methods`) and the
command walk of the CLI (`tests.helpers.cli`). Import them as ``from tests.helpers.networks
import small_convnet``: pytest (``--import-mode=importlib``) makes ``tests`` a package
rooted at this folder's parent, as it does for ``tests.conftest``."""
