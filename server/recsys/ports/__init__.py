"""Ports: the small abstract interfaces the domain depends on; adapters implement them."""
