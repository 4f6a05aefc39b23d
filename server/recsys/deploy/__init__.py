"""Local multi-process deployments (`recsys up`)."""
