"""Completion posed as kernel regression over the observed coordinates.

``NTKImputer`` completes matrices (numpy arrays with NaN, or DataFrames) with the NTK of a fully
connected network; ``inpaint`` and ``CNTKInpainter`` fill missing pixels with the CNTK of an
encoder-decoder network (or, for comparison, a trained Deep Image Prior network).
"""
import importlib

_EXPORTS = {"NTKImputer": ".matrix", "CNTKInpainter": ".image", "inpaint": ".image"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Imported lazily so that matrix users do not pay for the image stack and vice versa.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
