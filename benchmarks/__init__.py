"""Benchmarks (speed, memory, accuracy); each script writes its JSON result under benchmarks/results/."""
