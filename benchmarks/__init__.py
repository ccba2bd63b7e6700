"""Benchmarks of jaxent against its peers; see benchmarks/README.md."""
