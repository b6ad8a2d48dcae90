"""Matrix and feature tables from delimited text files (or standard input), and their output.

A matrix file has the row labels in its first column (unless ``row_labels=False``: every
column is data and rows are numbered from 1) and the column labels in its header; blank cells
and pandas' default NA tokens (plus any extra ``na_values``) are missing entries. The separator
is ``,``, ``;`` or tab, found from the file when not given; the text is UTF-8 (a byte-order mark
is allowed) unless an ``encoding`` is given. Labels must be unique and non-blank. Values are
written back with Python's shortest round-tripping float text, so an observed entry reads back
as the same float.
"""
from __future__ import annotations

import csv
import io
import sys

import numpy as np
import pandas as pd

from .files import write_text

__all__ = ["read_matrix_csv", "read_features_csv", "write_matrix_csv", "sniff_separator",
           "read_text", "SEPARATORS"]

SEPARATORS = (",", ";", "\t")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def read_text(path, encoding, what) -> str:
    """The decoded text of ``path`` ('-' = standard input); a decoding error names the file,
    the byte and line, and suggests ``--encoding``."""
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else open(path, "rb").read()
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return raw.decode(encoding or "utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        hint = ("give its encoding, e.g. --encoding latin-1 (or cp1252 for files saved by Excel "
                "on Windows)" if encoding is None else "check --encoding")
        raise ValueError(f"cannot read {what} {path}: byte 0x{raw[err.start]:02x} on line {line} "
                         f"is not valid {encoding or 'UTF-8'}; {hint}") from None
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None


def sniff_separator(text: str) -> str:
    """The one of ``SEPARATORS`` that splits the first data lines into the same number (> 1) of
    fields, the most fields winning (the header line is skipped: some writers leave out the
    row-label header); ',' when none does."""
    lines = [ln for ln in text.splitlines()[:51] if ln.strip()]
    sample = lines[1:] or lines
    best, best_fields = ",", 1
    for sep in SEPARATORS:
        counts = {len(row) for row in csv.reader(sample, delimiter=sep)}
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            best, best_fields = sep, fields
    return best


def _parse(text, path, what, sep, na_values, row_labels):
    """(DataFrame of str cells with NaN = missing, separator) from the file's text."""
    sep = sep or sniff_separator(text)
    options = {"sep": sep, "header": None, "dtype": str}
    try:
        header = pd.read_csv(io.StringIO(text), nrows=1, na_filter=False, **options)
        body = pd.read_csv(io.StringIO(text), skiprows=1, na_values=na_values or None,
                           keep_default_na=True, **options)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {path} has no data rows") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"cannot read {what} {path} ({_SEP_NAMES[sep]}-separated): {err}") from None
    names = [str(v).strip() for v in header.iloc[0]]
    if row_labels and len(names) == body.shape[1] - 1:
        names = [""] + names  # a header without the row-label column's name
    if len(names) != body.shape[1]:
        raise ValueError(f"{what} {path}: the header has {len(names)} fields but the rows have "
                         f"{body.shape[1]} ({_SEP_NAMES[sep]}-separated; see --sep)")
    if row_labels:
        # (the values only: from the Series, an empty name would become its column number, 0)
        index = pd.Index(body.iloc[:, 0].to_numpy(), name=names[0] or None)
        body, names = body.iloc[:, 1:], names[1:]
        if index.hasnans:
            raise ValueError(f"{what} {path}: a row has no label in the first column (use "
                             "--no-row-labels if the first column is data)")
    else:
        index = pd.RangeIndex(1, body.shape[0] + 1)
    if body.shape[0] == 0 or body.shape[1] == 0:
        raise ValueError(f"{what} {path} has no data ({_SEP_NAMES[sep]}-separated; expected "
                         + ("row labels in the first column and " if row_labels else "")
                         + "column labels in the header; see --sep)")
    if "" in names:
        raise ValueError(f"{what} {path}: column {names.index('') + 1 + row_labels} has no name "
                         "in the header")
    frame = pd.DataFrame(body.to_numpy(), index=index, columns=pd.Index(names))
    for axis, labels in (("row", frame.index), ("column", frame.columns)):
        if labels.has_duplicates:
            dup = list(labels[labels.duplicated()].unique()[:5])
            raise ValueError(f"{what} {path}: duplicated {axis} label(s) {dup}")
    return frame, sep


def _read(path, na_values, what, sep, encoding, row_labels):
    return _parse(read_text(path, encoding, what), path, what, sep, na_values, row_labels)


def read_matrix_csv(path, na_values=None, *, sep=None, encoding=None,
                    row_labels=True) -> pd.DataFrame:
    """Float DataFrame (NaN = missing) from a labelled table (module docstring; ``path`` '-' =
    standard input). A non-numeric or infinite cell raises ValueError naming its row label and
    column. The separator used is in ``frame.attrs['sep']``."""
    frame, sep = _read(path, na_values, "matrix", sep, encoding, row_labels)
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        i, j = np.argwhere(bad.to_numpy())[0]
        raise ValueError(f"{path}: non-numeric value {frame.iat[i, j]!r} at row "
                         f"{frame.index[i]!r}, column {frame.columns[j]!r} (blank cells and NA "
                         "tokens are missing; add other tokens with --na-values)")
    numeric = numeric.astype(np.float64)
    infinite = np.isinf(numeric.to_numpy())
    if infinite.any():
        i, j = np.argwhere(infinite)[0]
        raise ValueError(f"{path}: infinite value {frame.iat[i, j]!r} at row {frame.index[i]!r}, "
                         f"column {frame.columns[j]!r} (leave missing entries blank or NA)")
    numeric.attrs["sep"] = sep
    return numeric


def read_features_csv(path, na_values=None, *, sep=None, encoding=None) -> pd.DataFrame:
    """Feature table indexed by the labels of its first column; numeric columns become floats,
    other columns stay categorical (one-hot encoded by the priors)."""
    frame, _ = _read(path, na_values, "feature file", sep, encoding, True)
    out = frame.copy()
    for col in frame.columns:
        converted = pd.to_numeric(frame[col], errors="coerce")
        if not (converted.isna() & frame[col].notna()).any():
            out[col] = converted
    return out


def write_matrix_csv(frame, path, *, sep=",", row_labels=True) -> None:
    """Write ``frame`` with separator ``sep`` (with its row labels unless ``row_labels`` is
    False) atomically to ``path``, or to standard output when ``path`` is '-'."""
    text = frame.to_csv(sep=sep, index=row_labels)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text(path, text)
