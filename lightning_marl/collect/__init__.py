"""Behaviour policies and dataset collection."""
