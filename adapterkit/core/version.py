"""The package version, recorded in every saved adapter."""

__version__ = "0.1.0"
