"""Users' own files (CSV, TSV, Parquet) -> the columns ``grank.tables`` builds a data set from.

``python -m grank data --interactions FILE [--items FILE] [--users FILE] --name NAME`` reads an
interaction log and its optional side tables, builds the data set and writes it to the cache;
docs/DATA.md is the user guide. The format is chosen by the file's extension (``EXTENSIONS``).

CSV columns are read as text and typed here, so one rule covers every file: a field that is
empty after trimming spaces is missing. Parquet columns keep their types (integers, floats,
strings, timestamps, dates). What each column becomes:

- ``user_id``, ``item_id``: int64 when every value is an integer, else strings; a column that
  mixes both is an error (``string_ids`` reads every id as written). Rows without an id are
  dropped and counted; negative item ids are errors (-1 pads requests);
- ``timestamp`` (optional): int64 Unix seconds, from integers, ISO 8601 text (no zone = UTC) or
  Parquet timestamp/date types; missing, unparsable, negative or millisecond values are errors;
- ``event`` (optional): numbers (a rating) when every value is a number, else names (view,
  click, purchase); a missing value is an error;
- side tables: the id column, an item's display ``name``, and every other column as text
  features ('' = missing).

Every error is an ``InputError`` naming the file, the column and the first offending rows
(1-based data rows, the header not counted) with their values.
"""
from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .cli import InputError
from .data import BUILTIN, cache_path, check_name, save
from .tables import Log, Table, from_columns

EXTENSIONS = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")
LOG_COLUMNS = ("user_id", "item_id", "timestamp", "event")
# Unix seconds pass 1e11 in the year 5138; Unix milliseconds passed it in 1973.
MILLISECONDS = 10 ** 11
SHOWN = 3  # offending rows quoted in a message
MISSING_IDS = "rows with a missing user_id or item_id"
_INT = r"^-?[0-9]{1,18}$"  # 18 digits always fit int64; longer "numbers" stay text
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


@dataclass
class _Column:
    """One column of a file: ``values`` [n] str (trimmed), int64 or float64, or int64 Unix
    seconds for ``kind`` "time" (a Parquet timestamp or date); ``missing`` [n] bool."""
    name: str
    kind: str  # "str", "int", "float", "time", or "other" (a Parquet type no rule reads)
    values: np.ndarray
    missing: np.ndarray


def _where(mask: np.ndarray, values=None) -> str:
    """'row 4: 'x', row 9: 'y'' (or 'rows 4, 9' without ``values``) for the first offending rows
    (1-based data rows)."""
    idx = np.flatnonzero(mask)[:SHOWN]
    if values is None:
        return ("row " if len(idx) == 1 else "rows ") + ", ".join(str(i + 1) for i in idx.tolist())
    vals = np.asarray(values)[idx].tolist()  # Python scalars: reprs without numpy's type names
    return ", ".join(f"row {i + 1}: {v!r}" for i, v in zip(idx.tolist(), vals))


def _fail(source: str, col: str, problem: str, mask: np.ndarray, values=None, hint: str = "") -> InputError:
    n = int(mask.sum())
    return InputError(f"{source}: column {col!r} {problem} in {n:,} row{'s' * (n > 1)} "
                      f"({_where(mask, values)}){'; ' + hint if hint else ''}")


def _fmt(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InputError(f"{path.name}: unknown file type; use one of {', '.join(EXTENSIONS)} "
                     "(the extension chooses the format)")


def _header(path: Path, delimiter: str) -> list[str]:
    """The CSV header's column names (read here so that every column can be typed as text)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:  # decode the first line only: the rows' encoding errors are pyarrow's to report
        with opener(path, "rb") as f:
            line = f.readline().decode("utf-8-sig")
        row = next(csv.reader([line], delimiter=delimiter), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path.name}: cannot read the header ({e})") from None
    if not row:
        raise InputError(f"{path.name}: empty file (no header, no rows)")
    names = [c.strip() for c in row]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise InputError(f"{path.name}: column {dup[0]!r} appears {names.count(dup[0])} times in the header")
    return names


def _read_csv(path: Path, delimiter: str):
    import pyarrow as pa
    from pyarrow import csv as pcsv

    names = _header(path, delimiter)
    bad = []

    def invalid(row):  # collect rows with the wrong number of fields; report them together
        bad.append(row)
        return "skip"

    def read(threads: bool):
        return pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(column_names=names, skip_rows=1, use_threads=threads),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                            invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
    try:
        table = read(True)
        if bad and bad[0].number is None:  # only a single-threaded read numbers the rows
            bad.clear()
            table = read(False)
    except (pa.ArrowException, OSError) as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise InputError(f"{path.name}: cannot read as {kind} ({e})") from None
    if bad:  # InvalidRow.number counts file lines from 1, the header's included
        shown = ", ".join(f"row {r.number - 1}: {r.actual_columns} fields {r.text[:60]!r}"
                          for r in bad[:SHOWN])
        raise InputError(f"{path.name}: {len(bad):,} rows do not have the header's {len(names)} fields "
                         f"({shown}); quote values that contain the separator")
    return table


def _column(name: str, col) -> _Column:
    """A pyarrow column -> ``_Column`` (Parquet types kept; everything else as text)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_dictionary(t):  # pandas categoricals
        col, t = col.cast(t.value_type), t.value_type
    missing = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(t):
        return _Column(name, "int", col.fill_null(0).cast(pa.int64()).to_numpy(), missing)
    if pa.types.is_floating(t):
        v = col.fill_null(math.nan).cast(pa.float64()).to_numpy()
        return _Column(name, "float", v, missing | np.isnan(v))
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        # the stored integer is UTC in the type's unit (a zoned timestamp stores UTC too)
        unit = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}.get(getattr(t, "unit", None), 1)
        raw = col.fill_null(0).cast(pa.int64() if pa.types.is_timestamp(t) or pa.types.is_date64(t)
                                    else pa.int32()).cast(pa.int64()).to_numpy()
        secs = raw * 86400 if pa.types.is_date32(t) else raw // (1000 if pa.types.is_date64(t) else unit)
        return _Column(name, "time", secs, missing)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
        text = pc.utf8_trim_whitespace(col.cast(pa.string())).fill_null("")
        v = np.asarray(text.to_numpy(zero_copy_only=False), dtype=str)
        return _Column(name, "str", v, missing | (v == ""))
    # an error only if the column is used: an ignored column may have any type
    return _Column(name, "other", np.full(len(col), str(t)), missing)


def _usable(source: str, c: _Column) -> _Column:
    if c.kind == "other":
        raise InputError(f"{source}: column {c.name!r} has the Parquet type {c.values[0]}, which is not "
                         "read; store ids and features as integers or strings (a multi-valued feature "
                         "as text joined with the separator), times as integers, timestamps or dates")
    return c


def _read(path) -> tuple[str, int, dict]:
    """(the file's name, rows, {column name: _Column}) of a CSV, TSV or Parquet file."""
    path = Path(path)
    fmt = _fmt(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path.name}: cannot read as Parquet ({e})") from None
    else:
        table = _read_csv(path, "\t" if fmt == "tsv" else ",")
    if table.num_rows == 0:
        raise InputError(f"{path.name}: no rows (a header only)")
    import pyarrow as pa
    try:
        cols = {name.strip(): _column(name.strip(), table.column(name)) for name in table.column_names}
    except pa.ArrowException as e:  # e.g. uint64 ids beyond int64
        raise InputError(f"{path.name}: cannot convert a column ({e})") from None
    return path.name, table.num_rows, cols


def _require(source: str, cols: dict, needed) -> None:
    lost = [c for c in needed if c not in cols]
    if lost:
        raise InputError(f"{source}: missing column{'s' * (len(lost) > 1)} {', '.join(map(repr, lost))}; "
                         f"the file has {', '.join(map(repr, cols)) or 'no columns'} (column names are "
                         "case-sensitive)")


def _text(c: _Column) -> np.ndarray:
    """[n] str, '' where missing; integral floats without '.0' (pandas stores integers with gaps
    as floats)."""
    if c.kind in ("str", "other"):
        return c.values
    if c.kind == "float":
        v = [str(int(x)) if x.is_integer() else repr(x) for x in np.nan_to_num(c.values).tolist()]
        out = np.asarray(v, dtype=str)
    else:
        out = c.values.astype(str)
    return np.where(c.missing, "", out)


def _numbers(text: np.ndarray, pattern: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(ok [n] bool: the value matches ``pattern``, values [n] ``dtype``, 0 where not ok)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    arr = pa.array(text, pa.string())
    ok = pc.match_substring_regex(arr, pattern).to_numpy(zero_copy_only=False)
    vals = np.zeros(len(text), dtype)
    if ok.any():
        vals[ok] = pc.cast(arr.filter(pa.array(ok)), pa.from_numpy_dtype(np.dtype(dtype))).to_numpy()
    return ok, vals


def _ids(source: str, c: _Column, string_ids: bool, check: np.ndarray) -> np.ndarray:
    """[n] int64 or str ids ('' / 0 where missing); ``check`` [n] bool: the rows that count."""
    if c.kind == "int" and not string_ids:
        values = c.values
    else:
        text = _text(c)
        if string_ids:
            return text
        ok, values = _numbers(text, _INT, np.int64)
        present = check & ~c.missing
        if not ok[present].any():
            return text
        if not ok[present].all():
            raise _fail(source, c.name, "mixes integer ids and other ids: not integers", present & ~ok,
                        text, "if the ids are names or codes, pass --string-ids to read every id as "
                        "written")
    if c.name == "item_id":
        neg = check & ~c.missing & (values < 0)
        if neg.any():
            raise _fail(source, c.name, "has negative ids", neg, values,
                        "item ids must be 0 or more (-1 pads requests)")
    return values


def _iso(text: str) -> int | None:
    """Unix seconds of an ISO 8601 time ('2024-03-01T12:00:00Z', '2024-03-01 12:00:00',
    '2024-03-01'); no zone means UTC; None when unparsable."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return math.floor(t.timestamp())


def _no_gaps(source: str, c: _Column, keep: np.ndarray, need: str, without: str) -> None:
    """An optional column, once present, must be filled in every kept row."""
    gap = keep & c.missing
    if gap.any():
        raise _fail(source, c.name, "is empty", gap,
                    hint=f"every interaction needs {need} (or remove the column: then {without})")


def _times(source: str, c: _Column, keep: np.ndarray) -> np.ndarray:
    """[n] int64 Unix seconds (rows outside ``keep`` unchecked)."""
    _no_gaps(source, c, keep, "a time to be ordered", "file order is time")
    if c.kind in ("int", "time"):
        secs, raw = c.values, c.values
    elif c.kind == "float":
        secs, raw = np.floor(np.nan_to_num(c.values)).astype(np.int64), c.values
    else:
        raw = c.values
        ok, secs = _numbers(raw, _INT, np.int64)
        dec, fsecs = _numbers(raw, _FLOAT, np.float64)  # decimal seconds: floored
        dec &= ~ok
        secs[dec], ok = np.floor(fsecs[dec]).astype(np.int64), ok | dec
        todo = keep & ~ok
        if todo.any():  # ISO 8601: parse each distinct value once
            uniq, inv = np.unique(raw[todo], return_inverse=True)
            parsed = [_iso(u) for u in uniq.tolist()]
            bad = np.array([p is None for p in parsed])[inv]
            if bad.any():
                mask = np.zeros(len(raw), bool)
                mask[np.flatnonzero(todo)[bad]] = True
                raise _fail(source, c.name, "has values that are neither Unix seconds nor ISO 8601 "
                            "times", mask, raw, "write e.g. 1709294400, 2024-03-01T12:00:00Z or 2024-03-01")
            secs[todo] = np.array([p for p in parsed], np.int64)[inv]
    big = keep & (secs > MILLISECONDS)
    if big.any():
        raise _fail(source, c.name, "has values that look like milliseconds", big, raw,
                    "timestamps are Unix seconds: divide by 1000")
    neg = keep & (secs < 0)
    if neg.any():
        raise _fail(source, c.name, "has times before 1970 (negative Unix seconds)", neg, raw)
    return secs.astype(np.int64)


def _event(source: str, c: _Column, keep: np.ndarray) -> np.ndarray:
    """[n] int64 or float64 (ratings: every value a number) or str (event names)."""
    _no_gaps(source, c, keep, "an event to be typed", "every interaction is one event")
    if c.kind == "int":
        return c.values
    values = c.values
    if c.kind == "str":
        ints, ivals = _numbers(values, _INT, np.int64)
        if ints[keep].all():
            return ivals
        nums, fvals = _numbers(values, _FLOAT, np.float64)
        if not nums[keep].all():
            return values  # names: a column with any non-number is a column of names
        values = fvals
    values = np.nan_to_num(values)  # NaN only in dropped rows
    if np.all(values[keep] == np.floor(values[keep])):
        return values.astype(np.int64)  # ratings written 4.0 are the rating 4
    return values


def read_log(path, string_ids: bool = False) -> tuple[Log, dict]:
    """An interactions file -> (``Log`` in file order, {reason: rows dropped}). ``Log.user`` and
    ``Log.item`` are [n] int64 when every id is an integer, else str (``string_ids``: always str);
    rows without a user_id or item_id are dropped and counted."""
    source, n, cols = _read(path)
    _require(source, cols, ("user_id", "item_id"))
    for c in LOG_COLUMNS:
        if c in cols:
            _usable(source, cols[c])
    keep = ~(cols["user_id"].missing | cols["item_id"].missing)
    if not keep.any():
        raise InputError(f"{source}: every row misses a user_id or an item_id")
    user = _ids(source, cols["user_id"], string_ids, keep)
    item = _ids(source, cols["item_id"], string_ids, keep)
    time = _times(source, cols["timestamp"], keep) if "timestamp" in cols else None
    event = _event(source, cols["event"], keep) if "event" in cols else None
    dropped = {MISSING_IDS: int(n - keep.sum())} if not keep.all() else {}
    log = Log(user=user[keep], item=item[keep], time=None if time is None else time[keep],
              event=None if event is None else event[keep], source=source,
              ignored=tuple(c for c in cols if c not in LOG_COLUMNS), rows=np.flatnonzero(keep) + 1)
    return log, dropped


def read_table(path, id_column: str, string_ids: bool = False, names: bool = False) -> Table:
    """An items (``id_column`` "item_id") or users ("user_id") file -> ``Table``: ``ids`` [n]
    int64 or str, ``features`` {column: [n] str, '' = missing} of every other column; with
    ``names`` the ``name`` column (if any) becomes ``Table.names`` [n] str instead."""
    source, n, cols = _read(path)
    _require(source, cols, (id_column,))
    for c in cols.values():
        _usable(source, c)
    c = cols[id_column]
    if c.missing.any():
        raise _fail(source, id_column, "is empty", c.missing,
                    hint="every row of a side table needs an id")
    ids = _ids(source, c, string_ids, np.ones(n, bool))
    shown = _text(cols["name"]) if names and "name" in cols else None
    feats = {k: _text(v) for k, v in cols.items() if k != id_column and not (names and k == "name")}
    return Table(ids=ids, features=feats, names=shown, source=source)


def build_dataset(name: str, interactions, items=None, users=None, separator: str = "|",
                  unknown_items: str = "error", event_order=None, strong_event=None,
                  string_ids: bool = False):
    """Read the files, build the data set ``name`` (``grank.tables.from_columns``: every rule
    is there) and write it to the cache. ``event_order``: event names weakest first (a list or
    'view,click,purchase'). Returns (Interactions, summary dict)."""
    if name in BUILTIN:
        raise InputError(f"name: {name!r} is a built-in data set; choose another name for your files")
    try:
        check_name(name)
    except ValueError as e:
        raise InputError(str(e)) from None
    if isinstance(event_order, str):
        event_order = [e.strip() for e in event_order.split(",") if e.strip()]
    log, dropped = read_log(interactions, string_ids)
    if event_order and (log.event is None or log.event.dtype.kind not in "US"):
        what = "has no 'event' column" if log.event is None else "has numeric events (ordered by value)"
        raise InputError(f"{log.source}: --event-order names event types, but the file {what}")
    item_table = None if items is None else read_table(items, "item_id", string_ids, names=True)
    user_table = None if users is None else read_table(users, "user_id", string_ids)
    data, summary = from_columns(name, log, item_table, user_table, separator=separator,
                                 unknown_items=unknown_items, event_order=event_order,
                                 strong_event=strong_event, dropped=dropped)
    # data.summary is this dict: what is added here is saved with the data set
    summary["files"] = {k: Path(v).name for k, v in
                        (("interactions", interactions), ("items", items), ("users", users)) if v is not None}
    summary["id_types"] = {k: "string" if a.dtype.kind in "US" else "integer"
                           for k, a in (("user", data.user_ids), ("item", data.item_ids))}
    summary["cache"] = str(cache_path(name))
    save(data)
    return data, summary


def format_summary(summary: dict) -> str:
    """The multi-line report ``python -m grank data`` prints after building a data set."""
    s, name = summary, summary["dataset"]
    lines = [f"data set {name!r}: {s['users']:,} users, {s['items']:,} items, "
             f"{s['interactions']:,} interactions"]
    if s.get("files"):
        lines.append("  files: " + ", ".join(f"{v} ({k})" for k, v in s["files"].items()))
    if s.get("id_types"):
        lines.append("  id types: " + ", ".join(f"{k} {v}" for k, v in s["id_types"].items()))
    events = list(s["events"])
    lines.append("  events (weakest first): " + ", ".join(f"{e} {c:,}" for e, c in s["events"].items()))
    lines.append("  strong events: " + ", ".join(events[events.index(s["strong_event"]):]))
    lines.append("  time: " + ("timestamps from the file" if s["timestamps"] else
                               "no timestamps, file order is time"))
    for kind in ("item", "user"):
        feats = s[f"{kind}_features"]
        lines.append(f"  {kind} features: " + ("; ".join(f"{k} ({v})" for k, v in feats.items()) or "none"))
    lines.append("  dropped:" + ("" if s["dropped"] else " nothing dropped"))
    lines += [f"    {reason}: {count:,}" for reason, count in s["dropped"].items()]
    ignored = "; ".join(f"{f}: {', '.join(cols)}" for f, cols in s.get("ignored_columns", {}).items())
    lines.append("  ignored columns: " + (ignored or "none"))
    if s.get("cache"):
        lines.append(f"saved to {s['cache']}")
    lines.append(f"next: python -m grank train --dataset {name} --preset fast --out artifacts/{name}/grank")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """The flags of ``python -m grank data`` that build a data set from one's own files."""
    parser.add_argument("--interactions", metavar="FILE",
                        help="interaction log (.csv, .csv.gz, .tsv, .parquet, .pq) with user_id, item_id "
                             "and optional timestamp and event columns; see docs/DATA.md")
    parser.add_argument("--items", metavar="FILE", help="optional items table: item_id, an optional "
                        "display name, every other column a categorical feature")
    parser.add_argument("--users", metavar="FILE", help="optional users table: user_id and categorical "
                        "feature columns")
    parser.add_argument("--name", metavar="NAME", help="name of the data set built from the files "
                        "(required with --interactions); later commands take --dataset NAME")
    parser.add_argument("--separator", default="|", metavar="SEP", help="separator of multi-valued features, as in "
                        "Comedy|Drama (default: %(default)s)")
    parser.add_argument("--unknown-items", default="error", choices=("error", "drop"),
                        help="interactions whose item_id is not in the items table: stop with an error "
                             "(default) or drop and count them")
    parser.add_argument("--event-order", metavar="A,B,C", help="event names, weakest first "
                        "(e.g. view,click,purchase); default: the most frequent is the weakest")
    parser.add_argument("--strong-event", metavar="NAME", help="the weakest event that counts as a "
                        "strong signal (default: the top 30%% of the events, ratings 4 and 5 of 1..5)")
    parser.add_argument("--string-ids", action="store_true",
                        help="read every id as written, even ids that look like integers (007 stays 007)")


def run(args) -> int:
    """Build the data set from the files named in ``args`` and print its summary."""
    if not getattr(args, "interactions", None):
        raise InputError("--interactions FILE is required to build a data set from files "
                         "(--items and --users only go with it)")
    if not args.name:
        raise InputError("--name NAME is required with --interactions (later commands take --dataset NAME)")
    _, summary = build_dataset(args.name, args.interactions, items=args.items, users=args.users,
                               separator=args.separator, unknown_items=args.unknown_items,
                               event_order=args.event_order, strong_event=args.strong_event,
                               string_ids=args.string_ids)
    print(format_summary(summary))
    return 0
