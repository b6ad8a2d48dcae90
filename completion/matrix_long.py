"""Matrices in long format: one line per observed entry, ``row,col,value`` (or several value
columns: a vector entry), and predictions written back in the same format.

The user names the columns (:func:`parse_long_spec`: ``"user,item,rating"``, or
``"cell,drug,*"`` for every other column as a value); the other columns of the file are ignored.
Reading (:func:`read_long_csv`) shares the text handling of :mod:`completion.matrix_csv` (UTF-8
or ``--encoding``, standard input as '-', separator found from the file), and refuses, with one
line naming the file, the line (1-based, the header being line 1, as a text editor counts; blank
lines count too) and the column: a named column missing from the header, an empty row or column
label, a non-numeric value, a vector entry with only some of its values missing, a (row, col)
pair given twice. A line whose values are all missing (blank or NA) is a missing entry, like a
pair that is not listed. Labels keep the order of their first appearance.

The file is parsed in chunks of :data:`CHUNK_LINES` lines, so that the labels of a long ratings
list never exist as one Python string per line at once.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from .matrix_csv import _SEP_NAMES, read_text, sniff_separator, write_matrix_csv

__all__ = ["LongSpec", "LongMatrix", "LongFormatError", "parse_long_spec", "read_long_csv",
           "read_pairs_csv", "write_long_csv", "sparse_observed", "ALL_OTHERS", "CHUNK_LINES"]

ALL_OTHERS = "*"  # the value-columns spelling for "every column but the row and col ones"
CHUNK_LINES = 1_000_000


class LongFormatError(ValueError):
    """A long table or pairs file that cannot be read as asked (one line naming the file, the
    line and the column)."""


@dataclass(frozen=True)
class LongSpec:
    """Column names of a long table: ``row``, ``col`` and ``values`` (None = every other
    column, in file order)."""
    row: str
    col: str
    values: tuple[str, ...] | None


def parse_long_spec(text) -> LongSpec:
    """``"user,item,rating"`` -> LongSpec('user', 'item', ('rating',)); ``"cell,drug,*"`` ->
    every column but cell and drug holds values. Names are stripped of spaces; at least three
    names, all distinct, ``*`` only last."""
    names = [name.strip() for name in str(text).split(",")]
    if len(names) < 3 or "" in names:
        raise LongFormatError(f"--long {text!r}: give the row column, the column column and the value "
                         f"column(s), e.g. --long user,item,rating (or cell,drug,{ALL_OTHERS} for "
                         "every other column)")
    if ALL_OTHERS in names[:-1] or (names[-1] == ALL_OTHERS and len(names) != 3):
        raise LongFormatError(f"--long {text!r}: {ALL_OTHERS} stands for every other column and comes "
                         f"alone after the row and column names, e.g. cell,drug,{ALL_OTHERS}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LongFormatError(f"--long {text!r}: column(s) {dup} named twice")
    values = None if names[2] == ALL_OTHERS else tuple(names[2:])
    return LongSpec(names[0], names[1], values)


@dataclass
class LongMatrix:
    """Observed entries of an (m, n) matrix of d-vectors read from a long table.

    ``rows``, ``cols``: (N,) int64 positions into ``row_labels`` / ``col_labels`` (str, in order
    of first appearance); ``values``: (N, d) float64; ``value_names``: the d value columns;
    ``sep``: the separator of the file (used for the output)."""
    spec: LongSpec
    row_labels: pd.Index
    col_labels: pd.Index
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    value_names: list
    sep: str

    @property
    def shape(self):
        """(m, n): the matrix of entries."""
        return len(self.row_labels), len(self.col_labels)

    @property
    def dense_shape(self):
        """(m, n) for one value column, (m, n, d) for vector entries."""
        return self.shape + ((self.values.shape[1],) if self.values.shape[1] > 1 else ())

    def dense_bytes(self):
        """Bytes of the dense float64 array of :attr:`dense_shape`."""
        return 8 * int(np.prod(self.dense_shape, dtype=np.float64))

    def dense(self):
        """The dense float64 array of :attr:`dense_shape`, NaN where not observed."""
        X = np.full(self.shape + (self.values.shape[1],), np.nan)
        X[self.rows, self.cols] = self.values
        return X.reshape(self.dense_shape)

    def observed_values(self, rows, cols):
        """For entries (rows[k], cols[k]): (hit (k,) bool, values (k, d)) with hit True where
        the entry was observed (its values then the observed ones, else NaN)."""
        n = self.shape[1]
        lin = self.rows * n + self.cols
        order = np.argsort(lin, kind="stable")
        want = np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64)
        pos = np.minimum(np.searchsorted(lin[order], want), lin.size - 1)
        hit = lin[order][pos] == want
        out = np.full((want.size, self.values.shape[1]), np.nan)
        out[hit] = self.values[order[pos[hit]]]
        return hit, out


def sparse_observed(table):
    """scipy.sparse.csr_array (m, n) whose stored entries are exactly the observed ones (zeros
    included), for one value column: the input of NTKImputer when the dense matrix would not fit
    (missing entries are the ones not stored, never zeros)."""
    import scipy.sparse
    if table.values.shape[1] != 1:
        raise ValueError("a sparse matrix holds one value per entry; vector entries are dense")
    coo = scipy.sparse.coo_array((table.values[:, 0], (table.rows, table.cols)), shape=table.shape)
    return coo.tocsr()


# -- reading ---------------------------------------------------------------------------------------
def _line_of(text, record):
    """1-based line of data record ``record`` (0-based, after the header) in ``text``, counting
    every line as an editor does: pandas skips blank lines, so they are skipped here too."""
    seen = -1  # the header is the first non-blank line
    for number, line in enumerate(io.StringIO(text), 1):
        if line.strip("\r\n"):
            if seen == record:
                return number
            seen += 1
    return number


def _header(text, path, what, sep):
    first = next((ln for ln in io.StringIO(text) if ln.strip("\r\n")), None)
    if first is None:
        raise LongFormatError(f"{what} {path} is empty")
    return [name.strip() for name in next(iter(pd.read_csv(io.StringIO(first), sep=sep,
                                                            header=None, dtype=str,
                                                            keep_default_na=False).values))]


def _columns(header, spec, path, what, need_values):
    """The value column names, after checking that every named column is in the header."""
    wanted = [spec.row, spec.col] + (list(spec.values or []) if need_values else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise LongFormatError(f"{what} {path}, line 1: no column {', '.join(map(repr, missing))} in the "
                         f"header (columns: {', '.join(map(repr, header[:20]))}"
                         f"{', ...' if len(header) > 20 else ''})")
    dup = sorted({h for h in wanted if header.count(h) > 1})
    if dup:
        raise LongFormatError(f"{what} {path}, line 1: column(s) {dup} appear twice in the header")
    if not need_values:
        return []
    values = list(spec.values) if spec.values is not None else \
        [h for h in header if h not in (spec.row, spec.col)]
    if not values:
        raise LongFormatError(f"{what} {path}, line 1: no value column besides {spec.row!r} and "
                         f"{spec.col!r}")
    return values


def _chunks(text, path, what, sep, names, values, na_values):
    """DataFrames of CHUNK_LINES records: label columns as str (no NA tokens: 'NA' is a label),
    value columns as float64 with pandas' NA tokens plus ``na_values`` (a non-numeric cell
    raises the ValueError of pandas)."""
    na = list(STR_NA_VALUES) + list(na_values or [])
    options = dict(sep=sep, usecols=names, dtype={**{v: np.float64 for v in values},
                                                   **{k: str for k in names[:2]}},
                   keep_default_na=False, na_values={v: na for v in values},
                   chunksize=CHUNK_LINES)
    try:
        yield from pd.read_csv(io.StringIO(text), **options)
    except pd.errors.ParserError as err:
        raise LongFormatError(f"cannot read {what} {path} ({_SEP_NAMES[sep]}-separated): {err}") from None


def _first_non_numeric(text, path, what, sep, values, na_values):
    """ValueError naming the first non-numeric value cell (line and column)."""
    na = set(STR_NA_VALUES) | set(na_values or []) | {""}
    start = 0
    for chunk in pd.read_csv(io.StringIO(text), sep=sep, usecols=values, dtype=str,
                             keep_default_na=False, chunksize=CHUNK_LINES):
        for name in values:
            cells = chunk[name]
            blank = cells.isna() | cells.str.strip().isin(na)
            bad = (pd.to_numeric(cells.where(~blank), errors="coerce").isna() & ~blank).to_numpy()
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                return LongFormatError(f"{what} {path}, line {_line_of(text, start + k)}, column "
                                  f"{name!r}: non-numeric value {cells.iloc[k]!r} (blank cells "
                                  "and NA tokens are missing; add other tokens with --na-values)")
        start += len(chunk)
    return LongFormatError(f"{what} {path}: a value column is not numeric")


class _Labels:
    """Positions of labels in order of first appearance, grown chunk by chunk."""

    def __init__(self):
        self.lookup = {}

    def codes(self, column):
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        ids = np.array([self.lookup.setdefault(u, len(self.lookup)) for u in uniques],
                       dtype=np.int64)
        return ids[codes] if ids.size else np.zeros(len(codes), dtype=np.int64)

    def index(self):
        return pd.Index(list(self.lookup), dtype=object)


def _check_labels(chunk, names, start, text, path, what):
    for name, kind in zip(names, ("row", "column")):
        cells = chunk[name]
        empty = (cells.isna() | (cells.str.strip() == "")).to_numpy()
        if empty.any():
            k = int(np.flatnonzero(empty)[0])
            raise LongFormatError(f"{what} {path}, line {_line_of(text, start + k)}, column {name!r}: "
                             f"empty {kind} label")


def read_long_csv(path, spec, na_values=None, *, sep=None, encoding=None) -> LongMatrix:
    """Read the observed entries of a long table (module docstring) -> :class:`LongMatrix`.
    ``spec``: a :class:`LongSpec` or its text; ``path`` '-' = standard input."""
    spec = parse_long_spec(spec) if not isinstance(spec, LongSpec) else spec
    what = "long table"
    text = read_text(path, encoding, what)
    sep = sep or sniff_separator(text)
    header = _header(text, path, what, sep)
    values = _columns(header, spec, path, what, need_values=True)
    names = [spec.row, spec.col] + values
    row_ids, col_ids = _Labels(), _Labels()
    parts, start = [], 0
    try:
        for chunk in _chunks(text, path, what, sep, names, values, na_values):
            _check_labels(chunk, names[:2], start, text, path, what)
            V = chunk[values].to_numpy(dtype=np.float64)
            infinite = np.isinf(V)
            if infinite.any():
                k, j = np.argwhere(infinite)[0]
                raise LongFormatError(f"{what} {path}, line {_line_of(text, start + k)}, column "
                                      f"{values[j]!r}: infinite value {V[k, j]} (leave missing "
                                      "entries blank or NA)")
            gaps = np.isnan(V)
            partial = gaps.any(1) & ~gaps.all(1)
            if partial.any():
                k = int(np.flatnonzero(partial)[0])
                raise LongFormatError(f"{what} {path}, line {_line_of(text, start + k)}, column "
                                 f"{values[int(np.flatnonzero(gaps[k])[0])]!r}: missing value in "
                                 "an entry whose other values are given (a vector entry is "
                                 "given whole or not at all)")
            keep = ~gaps.all(1)
            parts.append((start + np.flatnonzero(keep), row_ids.codes(chunk[spec.row])[keep],
                          col_ids.codes(chunk[spec.col])[keep], V[keep]))
            start += len(chunk)
    except ValueError as err:
        if "could not convert" not in str(err) and "Unable to parse" not in str(err):
            raise
        raise _first_non_numeric(text, path, what, sep, values, na_values) from None
    if not parts or not sum(p[0].size for p in parts):
        raise LongFormatError(f"{what} {path} has no observed entry (no line with values)")
    record, rows, cols, V = (np.concatenate(p) for p in zip(*parts))
    table = LongMatrix(spec, row_ids.index(), col_ids.index(), rows, cols, V, values, sep)
    _check_duplicates(table, record, text, path, what)
    return table


def _check_duplicates(table, record, text, path, what):
    lin = table.rows * table.shape[1] + table.cols
    order = np.argsort(lin, kind="stable")
    same = np.flatnonzero(np.diff(lin[order]) == 0)
    if same.size:
        later = order[same + 1]  # within equal pairs, stable order: later records after
        again = int(later.min())  # the first record that repeats an earlier pair
        first = int(order[np.searchsorted(lin[order], lin[again])])  # that pair's earliest
        raise LongFormatError(f"{what} {path}, line {_line_of(text, record[again])}: the pair "
                         f"({table.spec.row} {table.row_labels[table.rows[again]]!r}, "
                         f"{table.spec.col} {table.col_labels[table.cols[again]]!r}) is given "
                         f"again (first on line {_line_of(text, record[first])})")


def read_pairs_csv(path, table, *, sep=None, encoding=None):
    """The (row, col) pairs to predict, from a table with ``table``'s row and column columns
    (other columns are ignored): -> (labels DataFrame of those two columns, rows (k,), cols (k,)
    positions). A label that is not in ``table`` is refused naming its line."""
    what = "pairs file"
    spec = table.spec
    text = read_text(path, encoding, what)
    sep = sep or sniff_separator(text)
    _columns(_header(text, path, what, sep), spec, path, what, need_values=False)
    frames, positions, start = [], [], 0
    for chunk in _chunks(text, path, what, sep, [spec.row, spec.col], [], None):
        _check_labels(chunk, [spec.row, spec.col], start, text, path, what)
        pos = []
        for name, labels, kind in ((spec.row, table.row_labels, "row"),
                                   (spec.col, table.col_labels, "column")):
            at = labels.get_indexer(chunk[name])
            if (at < 0).any():
                k = int(np.flatnonzero(at < 0)[0])
                raise LongFormatError(f"{what} {path}, line {_line_of(text, start + k)}, column "
                                 f"{name!r}: {kind} label {chunk[name].iloc[k]!r} is not in the "
                                 "long table")
            pos.append(at.astype(np.int64))
        frames.append(chunk)
        positions.append(pos)
        start += len(chunk)
    if not frames or start == 0:
        raise LongFormatError(f"{what} {path} lists no pair")
    labels = pd.concat(frames, ignore_index=True)
    return labels, np.concatenate([p[0] for p in positions]), np.concatenate([p[1] for p in positions])


def write_long_csv(labels, values, names, path, *, sep=","):
    """Write ``labels`` (DataFrame of the row and column label columns, k lines) with the
    (k,) or (k, d) ``values`` as columns ``names``, atomically to ``path`` ('-' = standard
    output)."""
    out = labels.reset_index(drop=True).copy()
    V = np.asarray(values, dtype=np.float64).reshape(len(out), -1)
    for j, name in enumerate(names):
        out[name] = V[:, j]
    write_matrix_csv(out, path, sep=sep, row_labels=False)
