"""rnnops export stage."""
