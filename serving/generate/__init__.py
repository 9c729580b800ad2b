"""Generation: the step scheduler (policy), sampling, and the naive baseline the benchmarks compare with."""
