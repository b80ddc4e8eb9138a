"""Tests of bignmf.io."""
