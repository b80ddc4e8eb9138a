"""Tests of bignmf.store."""
