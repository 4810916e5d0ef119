"""CDS Hooks 2.0 service: tacrolimus for lupus nephritis (pregnancy, salvage context, nephrotoxicity)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tacrolimus-cds")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
