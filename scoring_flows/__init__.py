"""scoring_flows."""
