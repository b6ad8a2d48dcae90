"""Kernels of infinitely wide networks (NTK, CNTK) and the Deep Image Prior network."""
