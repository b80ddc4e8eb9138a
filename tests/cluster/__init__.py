"""Tests of bignmf.cluster."""
