"""Offline jobs: learning embeddings and the ranking model, writing what the platform serves."""
