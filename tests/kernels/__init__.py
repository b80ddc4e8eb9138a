"""Tests of bignmf.kernels."""
