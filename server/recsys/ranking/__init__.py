"""Ranking models: the model repository (Triton layout), schemas and a reference model."""
