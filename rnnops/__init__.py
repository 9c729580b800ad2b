"""rnnops: train, export and serve recurrent sequence models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rnnops")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
