"""Completion posed as kernel regression over the observed coordinates.

``NTKImputer`` completes matrices (numpy arrays with NaN, or DataFrames) with the NTK of a fully
connected network; ``inpaint`` and ``CNTKInpainter`` fill missing pixels with the CNTK of an
encoder-decoder network (or, for comparison, a trained Deep Image Prior network).
"""
from .matrix import NTKImputer
from .image import CNTKInpainter, inpaint

__all__ = ["NTKImputer", "CNTKInpainter", "inpaint"]
