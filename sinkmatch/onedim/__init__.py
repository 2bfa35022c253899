"""Converged entropic optimal transport on the line in O(N + M) memory (see docs/onedim.md)."""
