"""Data the platform produces or reads: synthetic catalogues and embedding files."""
