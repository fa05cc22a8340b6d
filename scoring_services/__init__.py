"""scoring_services."""
