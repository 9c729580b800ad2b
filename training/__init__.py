"""rnnops training stage."""
