"""cirron: a profiler for ML training and inference (placeholder facade, being built)."""

from cirron._version import __version__


def shutdown() -> None:
    """Placeholder until the runtime lands."""


__all__ = ["__version__", "shutdown"]
