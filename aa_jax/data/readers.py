"""Reading tables: the user's CSV, TSV, JSON-lines and Parquet files, and GLUE's Parquet files.

The readers return ``pyarrow.Table`` objects; they and the checks beside them (columns
present, text that is text, at least one row) turn every Arrow, JSON or file-system error
into one :class:`aa_jax.errors.UserError` sentence naming the file (``what``) and the fix.
:mod:`aa_jax.data.glue` builds its splits from these tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from aa_jax.errors import UserError


def _read_parquet(path: Path, columns: Sequence[str], what: str) -> pa.Table:
    """Read ``columns`` of a Parquet file, turning Arrow's errors into one-line UserErrors."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        available = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{what} is not a readable Parquet file ({_first_line(error)}); "
                        f"replace it with an intact copy.") from error
    with parquet:
        _require_columns(available, columns, what)
        try:
            # The file's own reader: pq.read_table goes through pyarrow.dataset, whose
            # import (with pandas) costs more than reading a GLUE split.
            table = parquet.read(columns=list(columns))
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{what} is corrupt or truncated ({_first_line(error)}); "
                            f"replace it with an intact copy.") from error
    return _check_valid(table, what)


def _check_valid(table: pa.Table, what: str) -> pa.Table:
    """Checks what the readers do not: valid UTF-8 in column names and string data."""
    try:
        table.schema.names
        table.validate(full=True)
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise UserError(f"{what} holds invalid data ({_first_line(error)}); save it as UTF-8 "
                        f"text or replace it with an intact copy.") from None
    return table


def _read_json(path: Path, what: str) -> pa.Table:
    """A JSON-lines file, or a ``.json`` file holding one array of objects.

    Parsed with Python's ``json`` (which refuses absurd nesting with a RecursionError)
    rather than Arrow's JSON reader, which crashes the process on deeply nested input.
    """
    try:
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.split("\n") if line.strip()]
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError("each example must be one JSON object")
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, ValueError, OSError, OverflowError, RecursionError) as error:
        raise UserError(f"{what} is not valid JSON lines ({_first_line(error)}); write one "
                        f"JSON object per line with the text and label fields.") from None


def _read_delimited(path: Path, delimiter: str, text_columns: Sequence[str], what: str) -> pa.Table:
    """A CSV/TSV file with a header row; text columns are always read as strings.

    A TSV is read without quote processing, as GLUE's TSVs are written: their texts may
    begin with a ``"`` that is never closed, and quote processing would silently join the
    following rows into that one text.
    """
    import pyarrow.csv as pcsv

    quote = '"' if delimiter == "," else False
    try:
        return pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char=quote),
            convert_options=pcsv.ConvertOptions(
                column_types={column: pa.string() for column in text_columns}),
        )
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{what} could not be parsed ({_first_line(error)}); give it a header "
                        f"row and one example per row.") from error


def _first_invalid_utf8(path: Path) -> int | None:
    """The offset of the first byte of ``path`` that is not UTF-8, or None if all are."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                pending = len(decoder.getstate()[0])  # an unfinished character's bytes
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    return offset - pending + error.start
                offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a character
        return offset - len(decoder.getstate()[0])
    except OSError:
        return None
    return None


def _read_text_table(path: Path, suffix: str, text_columns: Sequence[str], what: str) -> pa.Table:
    """A CSV, TSV or JSON file; one that is not UTF-8 is refused as such, whatever broke."""
    try:
        if suffix in (".jsonl", ".json"):
            table = _read_json(path, what)
        else:
            table = _read_delimited(path, "\t" if suffix == ".tsv" else ",", text_columns, what)
        return _check_valid(table, what)
    except UserError:
        offset = _first_invalid_utf8(path)
        if offset is None:
            raise
        raise UserError(f"{what} is not UTF-8 text (byte {offset} is not valid UTF-8); convert "
                        f"it to UTF-8 (for example iconv -f latin1 -t utf-8 {path} > "
                        f"{path.with_stem(path.stem + '-utf8')}) and pass the new "
                        f"file.") from None


def _checked_suffix(path: Path, what: str) -> str:
    """The suffix of a file aa_jax reads, which must exist; else one sentence."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".jsonl", ".json", ".csv", ".tsv"):
        raise UserError(f"{what} {path} has an unsupported extension {suffix!r}; use .csv, "
                        f".tsv, .jsonl, .json or .parquet.")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path.")
    return suffix


def _read_user_file(path: Path, text_columns: Sequence[str], label_column: str) -> pa.Table:
    """Read a user data file by its extension and check the needed columns are there."""
    what = f"data file {path}"
    suffix = _checked_suffix(path, "Data file")
    columns = [*text_columns, label_column]
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, columns, what)
    table = _read_text_table(path, suffix, text_columns, what)
    _require_columns(table.column_names, columns, what)
    return table.select(columns)


def _require_columns(available: Sequence[str], needed: Sequence[str], what: str) -> None:
    missing = [column for column in needed if column not in available]
    if missing:
        raise UserError(f"{what} has no column(s) {', '.join(missing)} (it has "
                        f"{', '.join(available) or 'none'}); use a file with those columns "
                        f"or name the right ones.")
    repeated = [column for column in needed if list(available).count(column) > 1]
    if repeated:
        raise UserError(f"{what} has more than one column named {repeated[0]}; give its "
                        f"columns distinct names.")


def _first_line(error: BaseException) -> str:
    """The first sentence of an exception's message, short enough to quote in ours."""
    lines = str(error).strip().splitlines()
    line = lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _text_lists(table: pa.Table, text_columns: Sequence[str], what: str) -> tuple[list[str], ...]:
    """The text columns as Python lists of strings; missing values are an error."""
    columns = []
    for name in text_columns:
        column = table.column(name)
        if column.null_count:
            raise UserError(f"{what} has {column.null_count} missing value(s) in text column "
                            f"{name}; drop or fill those rows.")
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            import pyarrow.compute as pc

            try:
                column = pc.cast(column, pa.string())
            except pa.ArrowException as error:
                raise UserError(f"{what} text column {name} holds {column.type}, not text; "
                                f"point the text column option at a column of strings.") from error
        columns.append(column.to_pylist())
    return tuple(columns)


def _check_not_empty(table: pa.Table, what: str) -> None:
    if table.num_rows == 0:
        raise UserError(f"{what} has no rows; use a split that contains examples.")


def read_text_columns(path: Path, candidates: Sequence[Sequence[str]]) -> tuple[list[str], ...]:
    """The text columns of an input file to predict on: the first of ``candidates`` (lists
    of column names) that the file has, as lists of strings."""
    what = f"input file {path}"
    suffix = _checked_suffix(path, "Input file")
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            available = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{what} is not a readable Parquet file ({_first_line(error)}); "
                            f"replace it with an intact copy.") from error
    else:
        every = sorted({c for columns in candidates for c in columns})
        table = _read_text_table(path, suffix, every, what)
        available = table.column_names
    columns = next((list(c) for c in candidates if all(n in available for n in c)), None)
    if columns is None:
        wanted = " or ".join("+".join(c) for c in candidates)
        raise UserError(f"{what} has no column(s) {wanted} (it has "
                        f"{', '.join(available) or 'none'}); name its text columns so.")
    if suffix in (".parquet", ".pq"):
        table = _read_parquet(path, columns, what)
    _check_not_empty(table, what)
    return _text_lists(table, columns, what)
