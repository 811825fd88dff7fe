"""Faces: the HTTP wire formats (Seedance task API; more later). Thin adapters over the service."""
