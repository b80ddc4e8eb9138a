"""Tests of bignmf.datasets."""
