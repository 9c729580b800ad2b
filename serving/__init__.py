"""rnnops serving stage."""
