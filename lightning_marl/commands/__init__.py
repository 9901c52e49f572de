"""Subcommands of ``python -m lightning_marl`` beyond fit/evaluate/plugins/dataset info.

Each module defines ``add_commands(subparsers)`` and/or ``add_dataset_commands(dataset_subparsers)``
and sets ``func`` (a callable taking the parsed args and returning an exit code) on its parsers.
Modules must import heavy dependencies inside their command functions, not at module level, so
that ``--help`` stays fast.
"""
