"""bignmf's benchmarks: ``python -m benchmarks [--quick | --smoke] [--parts ...]``.

The scripts in this folder also run on their own (``python benchmarks/engine.py`` ...); the
suite (:mod:`benchmarks.suite`) runs them together and writes one report. See README.md here.
"""
