"""The pool's text columns (ids, URLs, captions) as valid UTF-8 strings, whatever the metadata holds.

Pool metadata is scraped web text: a parquet column typed string may still hold invalid UTF-8 (Arrow does not
check it on reading; Python fails on the row when it converts it), and a pool may type such columns binary.
Either way, one bad row must not stop a scan of millions: invalid bytes become U+FFFD, row by row, only in
arrays that have any. NUL and other control characters are valid UTF-8 and stay as they are (they are data
here: nothing builds a path or a command from them; a URL with them is refused by ``synret.safe_fetch``).
"""

from __future__ import annotations

import pyarrow as pa

_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


def is_text(column: pa.Array | pa.ChunkedArray) -> bool:
    return any(check(column.type) for check in _TEXT)


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``column`` as a pa.string() array; invalid UTF-8 replaced by U+FFFD. Other types: cast to string."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not is_text(column):
        return column.cast(pa.string())
    raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) or
                      pa.types.is_large_binary(column.type) else pa.binary())  # no check, no copy of the data
    try:
        text = raw.cast(pa.large_string() if pa.types.is_large_binary(raw.type) else pa.string())
        text.validate(full=True)  # a binary -> string cast checks UTF-8; this also catches what the cast let by
    except pa.ArrowInvalid:
        text = pa.array([None if v is None else v.decode("utf-8", "replace") for v in raw.to_pylist()], pa.string())
    return text.cast(pa.string())


def as_str(value) -> str | None:
    """A metadata value as text that UTF-8 can encode: lone surrogates (which JSON's ``\\udXXX`` escapes can
    make, and surrogateescape decoding) become U+FFFD; None stays None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def text_columns(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """A table whose string and binary columns are valid UTF-8 strings (:func:`as_text`); others unchanged."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    return pa.table({name: as_text(col) if is_text(col) else col
                     for name, col in zip(table.column_names, table.columns)})
