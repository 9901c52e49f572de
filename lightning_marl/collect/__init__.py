"""Behaviour policies and dataset collection.

behaviour.py (uniform random, scripted heuristics, noise), collector.py (batched rollouts into the
batch contract), online_training.py (MAPPO/IPPO behaviour policies) and masac.py (MASAC),
qualities.py (random / medium / expert / medium-replay / mixtures cut from checkpoints),
pipeline.py and config.py (``python -m lightning_marl collect``), recipes.py and matrix.py
(the small built-in datasets).
"""
