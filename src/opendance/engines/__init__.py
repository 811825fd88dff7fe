"""Engines: the things that actually make videos, behind one small interface."""
