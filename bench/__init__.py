"""Benchmarks (see README.md here); a package so that handlers import as bench.handler."""
