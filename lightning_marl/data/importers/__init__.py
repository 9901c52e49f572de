"""Readers of other projects' dataset formats (registered under the kind "importer")."""
