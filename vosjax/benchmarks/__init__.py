"""Benchmarks run with `python -m vosjax.bench NAME`; each module here has `main(argv)`."""
