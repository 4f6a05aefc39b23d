"""FeatureStore adapters."""
