"""opendance: a self-hosted video generation API server (the Seedance task API)."""

__version__ = "0.1.0"

from opendance.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]
