"""Adapters: implementations of the ports, chosen by configuration through `recsys.registry`."""
