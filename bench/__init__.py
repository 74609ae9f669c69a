"""Benchmarks (see README.md here); a package so that handlers import as bench.handler, and
compare.py's harness and scenarios as bench.harness and bench.scenarios."""
