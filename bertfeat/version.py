"""The package version: pyproject reads it, and it enters every export fingerprint."""
__version__ = "0.3.0"
