"""RecommendationCache adapters."""
