"""opendance: a self-hosted video generation API server (the Seedance task API)."""

__version__ = "0.1.0"
