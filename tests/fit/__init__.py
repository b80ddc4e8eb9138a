"""Tests of bignmf.fit."""
