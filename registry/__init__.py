"""rnnops registry stage."""
