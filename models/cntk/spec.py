"""Spec strings: a compact, stable spelling of a CNTK architecture (also its cache key).

Grammar (whitespace ignored, letters case-insensitive)::

    spec  := item ("," item)*
    item  := INT "*" "(" spec ")"        repeat a group, e.g. 3*(C3,L,D)
           | "[" FLOAT "|" [spec] "|" spec "]"
                                         Concat: skip branch (empty = identity) and main
                                         branch fed by the same input, the skip branch giving
                                         that fraction of the next Conv's input channels,
                                         e.g. [0.1|C1,L|D,C3,L,U]
           | layer
    layer := "C" INT                     Conv, odd kernel size:            C3
           | "R"                         ReLU
           | "L" [FLOAT]                 LeakyReLU, slope (default 0.01): L, L0.2
           | "G" FLOAT                   Gaussian (random Fourier feature) activation
                                         sqrt(2) cos(sigma u + b), sigma > 0: G8, G0.5; after
                                         a first Conv on an image prior it gives non-local-means
                                         weights exp(-msd / h^2), h^2 = 2 / sigma^2
           | "D"                         Downsample (stride 2)
           | "U" ["N" | "B" | "A"]       Upsample x2: nearest (default), periodic bilinear,
                                         bilinear with aligned corners (dense engine only)

The canonical spec (``Sequential.spec()``) spells every layer out: ``C3,L0.01,D,...,C3``.

An *architecture* (what ``CNTKInpainter(arch=...)`` takes, :class:`models.cntk.Architecture`)
is one network (a preset name, a spec string or a ``Sequential``), ``"NAME+avg"`` (its kernel
phase-averaged), ``"default"`` (:data:`DEFAULT_ARCHITECTURE`), or a list of networks run in
parallel (their kernels summed); :func:`split_architecture` reads that spelling.
"""
from __future__ import annotations

import re

from .layers import Concat, Conv, Downsample, Gaussian, LeakyReLU, ReLU, Upsample

_LAYER = re.compile(r"^(?:C(\d+)|R|L([0-9.eE+-]+)?|D|U([NBA])?|G([0-9.eE+-]+))$")


def _split_top(text: str, sep: str = ","):
    """Split on ``sep`` outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced '{ch}' in architecture spec at character {i}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced '(' or '[' in architecture spec")
    parts.append(text[start:])
    return parts


def parse_spec(text: str) -> list:
    """Layer objects of a spec string (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty architecture spec")
    compact = re.sub(r"\s+", "", text)
    layers = []
    for item in _split_top(compact):
        if item.startswith("[") and item.endswith("]"):
            parts = _split_top(item[1:-1], "|")
            if len(parts) != 3:
                raise ValueError(f"Concat {item!r} must read [fraction|skip layers|main layers]")
            try:
                alpha = float(parts[0])
            except ValueError:
                raise ValueError(f"Concat {item!r}: {parts[0]!r} is not a fraction") from None
            skip = parse_spec(parts[1]) if parts[1] else []
            layers.append(Concat(alpha, skip, parse_spec(parts[2])))
            continue
        rep = re.fullmatch(r"(\d+)\*\((.*)\)", item)
        if rep:
            count = int(rep.group(1))
            if count < 1:
                raise ValueError(f"repeat count must be >= 1 in {item!r}")
            layers.extend(parse_spec(rep.group(2)) * count)
            continue
        m = _LAYER.match(item.upper())
        if not m:
            raise ValueError(f"cannot read layer {item!r} in architecture spec {text!r}; "
                             "layers are C<k>, R, L[slope], G<sigma>, D, U[n|b|a], groups N*(...)")
        head = item[0].upper()
        if head == "C":
            layers.append(Conv(int(m.group(1))))
        elif head == "R":
            layers.append(ReLU())
        elif head == "L":
            layers.append(LeakyReLU(float(m.group(2))) if m.group(2) else LeakyReLU())
        elif head == "G":
            layers.append(Gaussian(float(m.group(4))))
        elif head == "D":
            layers.append(Downsample())
        else:
            mode = {None: "nearest", "N": "nearest", "B": "bilinear",
                    "A": "bilinear_aligned"}[m.group(3)]
            layers.append(Upsample(mode))
    return layers


def encoder_decoder_spec(levels: int, k: int = 3, activation: str = "L", upsample: str = "U") -> str:
    """``levels`` x (Conv-act-Down), Conv-act, ``levels - 1`` x (Up-Conv-act), Up, Conv: the
    reference notebook's shape (levels=3, LeakyReLU(0.01), nearest upsampling; checked against
    its stored kernels: the last upsampling feeds the read-out Conv directly)."""
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    block = f"C{k},{activation}"
    if levels == 0:
        return f"{block},C{k}"
    decoder = f"{levels - 1}*({upsample},{block})," if levels > 1 else ""
    return f"{levels}*({block},D),{block},{decoder}{upsample},C{k}"


def symmetric_spec(levels: int, k: int = 3, activation: str = "L", upsample: str = "U") -> str:
    """``levels`` x (Conv-act-Down), Conv-act, ``levels`` x (Up-Conv-act), Conv: a conv-act
    block after every upsampling."""
    block = f"C{k},{activation}"
    if levels == 0:
        return f"{block},C{k}"
    return f"{levels}*({block},D),{block},{levels}*({upsample},{block}),C{k}"


def skip_spec(levels: int, fraction: float = 4 / 132, k: int = 3, activation: str = "L",
              upsample: str = "U") -> str:
    """DIP's ``skip`` network shape: Conv-act, then per level a Concat of a 1x1 Conv-act skip
    branch (``fraction`` of the channels; DIP: 4 of 4 + 128) and a main branch Conv-act-Down,
    Conv-act, (deeper level), Up; after each Concat Conv(k)-act, Conv1-act; read-out Conv1."""
    a = activation
    inner = ""
    for _ in range(levels):
        main = f"C{k},{a},D,C{k},{a}," + (inner + "," if inner else "") + upsample
        inner = f"[{fraction!r}|C1,{a}|{main}],C{k},{a},C1,{a}"
    return f"C{k},{a}," + (inner + "," if inner else "") + "C1"


PRESETS = {
    "reference": encoder_decoder_spec(3),
    **{f"ed{s}": encoder_decoder_spec(s) for s in range(1, 7)},
    **{f"ed{s}-bilinear": encoder_decoder_spec(s, upsample="Ub") for s in range(1, 7)},
    **{f"ed{s}-relu": encoder_decoder_spec(s, activation="R") for s in range(1, 7)},
    **{f"sym{s}": symmetric_spec(s) for s in range(1, 7)},
    **{f"sym{s}-bilinear": symmetric_spec(s, upsample="Ub") for s in range(1, 7)},
    **{f"skip{s}": skip_spec(s) for s in range(1, 7)},
}
"""Named architectures: ``reference`` (the public notebook net), encoder-decoders ``ed<s>`` with
s levels in its shape (LeakyReLU 0.01, nearest), ``ed<s>-bilinear``, ``ed<s>-relu``;
``sym<s>`` / ``sym<s>-bilinear`` (a conv-act block after every upsampling); ``skip<s>``
(DIP's skip network shape, see :func:`skip_spec`)."""


DEFAULT_ARCHITECTURE = "sym5+avg"  # 5*(C3,L,D),C3,L,5*(U,C3,L),C3, phase-averaged
"""What ``arch="default"`` means (chosen by benchmarks/bench_inpaint.py; see RESULTS.md)."""

AVERAGED = "+avg"
"""Suffix of an architecture whose kernel is averaged over the joint phase shifts."""


def split_architecture(arch) -> tuple[list, bool]:
    """(networks as given: names, spec strings or ``Sequential`` s; phase-averaged?) of an
    architecture spelling (see the module docstring): ``"default"`` ->
    (``["sym5"]``, True); ``"ed3+avg"`` -> (``["ed3"]``, True); a list -> (the list, False)."""
    if isinstance(arch, str) and arch == "default":
        arch = DEFAULT_ARCHITECTURE
    if isinstance(arch, (list, tuple)):
        if not arch:
            raise ValueError("an architecture list needs at least one network")
        return list(arch), False
    if isinstance(arch, str) and arch.endswith(AVERAGED):
        return [arch[:-len(AVERAGED)]], True
    return [arch], False
