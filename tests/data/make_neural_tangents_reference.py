"""Writes ``neural_tangents_reference.npz``: NNGP and NTK of fully connected networks computed by
Neural Tangents' ``stax``, the reference that tests/test_ntk.py compares models.ntk against.

Not run by the tests (they read the stored file; JAX is in no extra). To regenerate, in a venv of
its own (not the project's)::

    python3 -m venv /tmp/ntvenv
    /tmp/ntvenv/bin/pip install jax==0.5.3 jaxlib==0.5.3 frozendict numpy
    /tmp/ntvenv/bin/pip install --no-deps neural-tangents==0.6.5
    /tmp/ntvenv/bin/python tests/data/make_neural_tangents_reference.py

``neural_tangents.experimental`` imports TensorFlow's jax2tf; an empty stand-in module replaces
it (only ``stax`` is used). Kernels are computed in float64 (``jax_enable_x64``).

Networks: ``depth`` x (Dense, activation), Dense(1), every Dense with W_std = sqrt(weight_var),
b_std = sqrt(bias_var), NTK parameterisation (stax divides every layer, the first included, by
sqrt(fan_in)); activations ReLU, LeakyReLU(0.2), erf; depths 1, 2, 3; (weight_var, bias_var)
(2.0, 0.1) and (1.5, 0.0). Inputs: 6 points in R^4 of norms 0.3 .. 2.5, two nearly parallel.
Stored keys: ``X`` (6, 4); ``<activation>_depth<L>_<case>_nngp`` / ``_ntk`` (6, 6) with case
``0`` / ``1`` indexing ``weight_var`` / ``bias_var`` (arrays); ``slope``; ``versions``.
"""
import os
import sys
import types

import numpy as np

sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

SLOPE = 0.2
CASES = [(2.0, 0.1), (1.5, 0.0)]
DEPTHS = (1, 2, 3)


def points(n=6, d=4, seed=0):
    """Rows of norms 0.3 .. 2.5; rows 0 and 1 nearly parallel."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[1] = X[0] + 0.05 * rng.standard_normal(d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X * np.linspace(0.3, 2.5, n)[:, None]


def main():
    X = points()
    out = {"X": X, "slope": np.float64(SLOPE),
           "weight_var": np.array([wv for wv, _ in CASES]),
           "bias_var": np.array([bv for _, bv in CASES]),
           "versions": np.array([f"neural-tangents {nt.__version__}", f"jax {jax.__version__}",
                                 f"jaxlib {jax.lib.__version__}", f"numpy {np.__version__}"])}
    activations = {"relu": stax.Relu, "leaky_relu": lambda: stax.LeakyRelu(SLOPE),
                   "erf": lambda: stax.Erf(a=1.0, b=1.0, c=0.0)}
    for name, act in activations.items():
        for depth in DEPTHS:
            for case, (wv, bv) in enumerate(CASES):
                dense = lambda width: stax.Dense(width, W_std=np.sqrt(wv), b_std=np.sqrt(bv))
                layers = [layer for _ in range(depth) for layer in (dense(512), act())]
                _, _, kernel_fn = stax.serial(*layers, dense(1))
                k = kernel_fn(X, None, ("nngp", "ntk"))
                out[f"{name}_depth{depth}_{case}_nngp"] = np.asarray(k.nngp, dtype=np.float64)
                out[f"{name}_depth{depth}_{case}_ntk"] = np.asarray(k.ntk, dtype=np.float64)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "neural_tangents_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays; {', '.join(out['versions'])}")


if __name__ == "__main__":
    main()
