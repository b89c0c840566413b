"""The package version (a leaf module: the exporter, the server and the CLI read it without importing soat)."""

__version__ = "0.1.0"
