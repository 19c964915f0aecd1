"""grank.reader: users' CSV / TSV / Parquet files -> a cached data set, and every error a user
can meet on the way (each names the file, the column and the first offending rows)."""
from __future__ import annotations

import argparse
import calendar
import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grank import data as D
from grank.cli import InputError
from grank.reader import MISSING_IDS, add_arguments, build_dataset, format_summary, read_log, read_table, run


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write(path, text: str):
    path.write_text(text.lstrip("\n"))
    return path


def utc(*ymdhms) -> int:
    return calendar.timegm((*ymdhms, *(0,) * (6 - len(ymdhms))))


def own_ids(d: D.Interactions, u: int) -> list:
    """User u's items as the file's ids, in the data set's (time) order."""
    return d.item_ids[d.seq(u)].tolist()


# ---------------------------------------------------------------- building data sets

def test_implicit_log_file_order_is_time(tmp_path):
    f = write(tmp_path / "clicks.csv", """
user_id,item_id
1,30
2,5
1,10
2,6
1,20
2,7
1,10
""")
    d, s = build_dataset("clicks", f)
    assert d.timed is False and s["timestamps"] is False
    assert d.event_names == ("interaction",) and set(d.ratings.tolist()) == {1}
    assert d.user_ids.tolist() == [1, 2] and d.item_ids.dtype == np.int64 and d.item_ids[0] == -1
    assert own_ids(d, 0) == [30, 10, 20, 10]  # a repeated row without time is a repeated interaction
    assert own_ids(d, 1) == [5, 6, 7]
    assert d.times.tolist() == list(range(7))
    assert d.user_feats.shape == (2, 0) and d.user_feat_sizes == () and d.item_features == []
    assert d.names[1:] == ["5", "6", "7", "10", "20", "30"]
    text = format_summary(s)
    assert "file order is time" in text and "nothing dropped" in text and "user features: none" in text


def test_string_ids_names_and_features_end_to_end(tmp_path):
    log = write(tmp_path / "log.csv", """
user_id,item_id,timestamp
u-a,sku-2,100
u-a,sku-1,50
u-a,sku-3,200
u-b,sku-3,10
u-b,sku-2,20
u-b,sku-1,30
""")
    items = write(tmp_path / "items.csv", """
item_id,name,brand
sku-1,Trail shoes,acme
sku-2,,zenith
sku-3,Rain jacket,
""")
    users = write(tmp_path / "users.csv", """
user_id,country,plan
u-b,FR,pro
u-a,DE,
""")
    d, s = build_dataset("shop", log, items=items, users=users)
    assert d.item_ids.tolist() == ["", "sku-1", "sku-2", "sku-3"]
    assert d.names == ["", "Trail shoes", "sku-2", "Rain jacket"]  # no name: the id is shown
    assert d.user_ids.tolist() == ["u-a", "u-b"]
    assert own_ids(d, 0) == ["sku-1", "sku-2", "sku-3"] and own_ids(d, 1) == ["sku-3", "sku-2", "sku-1"]
    brand = d.item_features[0]
    assert (brand.name, brand.multi, brand.vocab) == ("brand", False, ("", "acme", "zenith"))
    assert brand.values.tolist() == [0, 1, 2, 0]  # sku-3 has no brand: code 0 (unknown)
    assert d.user_feature_names == ("country", "plan") and d.user_feat_sizes == (3, 2)
    assert d.user_feature_vocabs == (("", "DE", "FR"), ("", "pro"))
    assert d.user_feats.tolist() == [[1, 0], [2, 1]]
    assert s["id_types"] == {"user": "string", "item": "string"}
    assert D.schema(d)["id_type"] == "string"


def test_string_ids_flag_keeps_ids_as_written(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id\n1,007\n1,7\n1,08\n")
    log, _ = read_log(f)
    assert log.item.dtype == np.int64 and log.item.tolist() == [7, 7, 8]  # 007 and 7 are one item
    log, _ = read_log(f, string_ids=True)
    assert log.item.tolist() == ["007", "7", "08"] and log.user.tolist() == ["1", "1", "1"]
    d, _ = build_dataset("codes", f, string_ids=True)
    assert d.item_ids.tolist() == ["", "007", "08", "7"] and d.user_ids.tolist() == ["1"]


def test_parquet_timestamp_and_date_types(tmp_path):
    when = np.array([utc(2024, 3, 1, 12), utc(2024, 3, 1, 9), utc(2024, 2, 1), utc(2024, 1, 5)], "int64")
    table = pa.table({
        "user_id": pa.array([7, 7, 7, 7], pa.int32()),
        "item_id": pa.array([1, 2, 3, 4], pa.int64()),
        "timestamp": pa.array(when * 1000, pa.timestamp("ms", tz="UTC")),
        "event": pa.array(["view", "view", "click", "view"]).dictionary_encode(),
        "note": pa.array([[1], [2], [], None], pa.list_(pa.int64())),  # unread type, but ignored
    })
    pq.write_table(table, tmp_path / "log.parquet")
    log, dropped = read_log(tmp_path / "log.parquet")
    assert log.time.tolist() == when.tolist() and dropped == {}
    assert log.event.tolist() == ["view", "view", "click", "view"] and log.ignored == ("note",)
    d, s = build_dataset("pq", tmp_path / "log.parquet")
    assert own_ids(d, 0) == [4, 3, 2, 1] and d.timed is True
    assert d.event_names == ("view", "click") and s["events"] == {"view": 3, "click": 1}
    assert s["ignored_columns"] == {"log.parquet": ["note"]}

    dates = pa.table({"user_id": ["a", "a"], "item_id": ["x", "y"],
                      "timestamp": pa.array([19783, 19784], pa.date32())})
    pq.write_table(dates, tmp_path / "dates.pq")
    assert read_log(tmp_path / "dates.pq")[0].time.tolist() == [utc(2024, 3, 1), utc(2024, 3, 2)]


def test_iso_timestamps_order_each_user(tmp_path):
    f = write(tmp_path / "log.csv", """
user_id,item_id,timestamp
1,10,2024-03-02
1,11,2024-03-01T12:00:00Z
1,12,2024-03-01 12:00:01
1,13,2024-03-01T13:00:00+02:00
1,14,1709294400
""")
    log, _ = read_log(f)
    assert log.time.tolist() == [utc(2024, 3, 2), utc(2024, 3, 1, 12), utc(2024, 3, 1, 12, 0, 1),
                                 utc(2024, 3, 1, 11), 1709294400]
    d, _ = build_dataset("iso", f)
    # 1709294400 is 2024-03-01T12:00:00Z, the same second as item 11: file order breaks the tie
    assert own_ids(d, 0) == [13, 11, 14, 12, 10]
    assert (np.diff(d.times) >= 0).all()


def test_multi_valued_genres(tmp_path):
    log = write(tmp_path / "log.tsv", "user_id\titem_id\n1\t1\n1\t2\n1\t3\n")
    items = write(tmp_path / "movies.tsv", "item_id\tname\tgenres\tdecade\n"
                  "1\tA film\tComedy|Drama\t1990s\n2\tB film\tDrama\t\n3\tC film\t\t1980s\n")
    d, s = build_dataset("films", log, items=items)
    genres, decade = d.item_features
    assert genres.multi is True and genres.vocab == ("Comedy", "Drama")
    assert genres.values.tolist() == [[0, 0], [1, 1], [0, 1], [0, 0]]
    assert decade.multi is False and decade.vocab == ("", "1980s", "1990s")
    assert decade.values.tolist() == [0, 2, 0, 1]
    assert s["item_features"] == {"genres": "multi-valued, 2 values", "decade": "single-valued, 2 values"}
    # another separator: '|' is then an ordinary character
    d, _ = build_dataset("films2", log, items=items, separator=";")
    assert d.item_features[0].multi is False and "Comedy|Drama" in d.item_features[0].vocab


def test_gzip_csv_and_numeric_events(tmp_path):
    rows = "user_id,item_id,event\n" + "".join(f"{u},{i},{r}\n" for u, i, r in
                                               [(1, 1, 5), (1, 2, "3.0"), (1, 3, 4), (2, 1, 1), (2, 2, 2), (2, 3, 4)])
    with gzip.open(tmp_path / "ratings.csv.gz", "wt") as f:
        f.write(rows)
    log, _ = read_log(tmp_path / "ratings.csv.gz")
    assert log.event.dtype == np.int64 and log.event.tolist() == [5, 3, 4, 1, 2, 4]
    d, s = build_dataset("stars", tmp_path / "ratings.csv.gz")
    assert d.event_names == ("1", "2", "3", "4", "5") and d.strong_event == 4  # ratings 4 and 5
    assert "strong events: 4, 5" in format_summary(s)
    half = write(tmp_path / "half.csv", "user_id,item_id,event\n1,1,4.5\n1,2,3\n1,3,.5\n")
    assert read_log(half)[0].event.tolist() == [4.5, 3.0, 0.5]


def test_events_with_any_name_are_names(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id,event\n1,1,view\n1,2,5\n1,3,view\n1,4,purchase\n")
    log, _ = read_log(f)
    assert log.event.dtype.kind == "U" and log.event.tolist() == ["view", "5", "view", "purchase"]
    d, s = build_dataset("named", f, event_order="view,5,purchase", strong_event="purchase")
    assert d.event_names == ("view", "5", "purchase") and d.strong_event == 3
    assert d.rat(0).tolist() == [1, 2, 1, 3]


def test_missing_ids_are_dropped_and_counted(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id\n1,1\n ,2\n1,2\n1,\n1,3\n")
    log, dropped = read_log(f)
    assert dropped == {MISSING_IDS: 2}
    assert log.user.tolist() == [1, 1, 1] and log.item.tolist() == [1, 2, 3]
    pq.write_table(pa.table({"user_id": pa.array([1, None, 1, 1], pa.int64()),
                             "item_id": pa.array(["a", "b", None, "c"])}), tmp_path / "log.parquet")
    log, dropped = read_log(tmp_path / "log.parquet")
    assert dropped == {MISSING_IDS: 2} and log.item.tolist() == ["a", "c"]


def test_duplicates_and_short_users_dropped_with_counts(tmp_path):
    f = write(tmp_path / "log.csv", """
user_id,item_id,timestamp,event,price
1,1,100,view,3
1,1,100,view,4
1,1,100,buy,3
1,2,200,view,3
1,3,300,view,3
2,1,100,view,3
2,2,100,view,3
2,2,100,view,3
3,1,50,view,3
,9,60,view,3
""")
    d, s = build_dataset("dups", f)
    assert s["dropped"] == {
        MISSING_IDS: 1,
        "duplicate rows (same user, item, time and event)": 2,
        "users with fewer than 3 interactions (cannot be split into train, validation and test)": 2,
        "interactions of those users": 3,
    }
    assert d.user_ids.tolist() == [1] and own_ids(d, 0) == [1, 1, 2, 3]
    assert d.rat(0).tolist() == [1, 2, 1, 1]  # view, buy (the same item and time, another event)
    text = format_summary(s)
    for reason, count in s["dropped"].items():
        assert f"{reason}: {count}" in text
    assert "ignored columns: log.csv: price" in text
    assert f"saved to {D.cache_path('dups')}" in text
    assert "python -m grank train --dataset dups --preset fast" in text


def test_saved_data_set_loads_with_the_same_fingerprint(tmp_path, cache):
    f = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" +
              "".join(f"{u},{(u * 7 + k) % 11},{1000 * k + u}\n" for u in range(5) for k in range(6)))
    items = write(tmp_path / "items.csv", "item_id,name,kind\n" +
                  "".join(f"{i},item {i},{'ab'[i % 2]}\n" for i in range(11)))
    d, s = build_dataset("mine", f, items=items)
    assert D.cache_path("mine").exists() and D.cache_path("mine").parent == cache
    again = D.load("mine")
    assert D.fingerprint(again) == D.fingerprint(d)
    assert again.names == d.names and again.item_ids.tolist() == d.item_ids.tolist()
    assert again.summary["dropped"] == s["dropped"] and again.summary["files"] == {"interactions": "log.csv",
                                                                                    "items": "items.csv"}


def test_unknown_items_error_or_drop(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,item_id\n1,1\n1,2\n1,99\n1,3\n")
    items = write(tmp_path / "items.csv", "item_id,kind\n1,a\n2,b\n3,a\n")
    with pytest.raises(InputError, match=r"log\.csv: item_id 99 \(row 3\) is not in the items table items\.csv"):
        build_dataset("unk", log, items=items)
    d, s = build_dataset("unk", log, items=items, unknown_items="drop")
    assert own_ids(d, 0) == [1, 2, 3]
    assert s["dropped"] == {"interactions whose item_id is not in the items table": 1}


@pytest.mark.parametrize("kind", ["items", "users"])
def test_duplicate_ids_in_side_tables(tmp_path, kind):
    log = write(tmp_path / "log.csv", "user_id,item_id\n1,1\n1,2\n1,3\n")
    col = "item_id" if kind == "items" else "user_id"
    side = write(tmp_path / f"{kind}.csv", f"{col},kind\n1,a\n2,b\n1,c\n3,d\n")
    with pytest.raises(InputError, match=rf"{kind}\.csv: column '{col}' must be unique; 1 appears 2 times "
                                         r"\(rows 1, 3\)"):
        build_dataset("dupids", log, **{kind: side})


def test_read_table_names_and_text_features(tmp_path):
    pq.write_table(pa.table({"item_id": pa.array([3, 1], pa.int64()), "name": ["C", None],
                             "year": pa.array([1999.0, None]), "cats": ["x|y", "z"]}), tmp_path / "items.pq")
    t = read_table(tmp_path / "items.pq", "item_id", names=True)
    assert t.ids.tolist() == [3, 1] and t.names.tolist() == ["C", ""] and t.source == "items.pq"
    assert {k: v.tolist() for k, v in t.features.items()} == {"year": ["1999", ""], "cats": ["x|y", "z"]}
    t = read_table(tmp_path / "items.pq", "item_id")
    assert t.names is None and t.features["name"].tolist() == ["C", ""]


def test_command_line_flags_and_run(tmp_path, capsys):
    log = write(tmp_path / "log.csv", "user_id,item_id,event\n1,1,view\n1,2,click\n1,3,view\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {o for a in p._actions for o in a.option_strings}
    assert {"--interactions", "--items", "--users", "--name", "--separator", "--unknown-items",
            "--event-order", "--strong-event", "--string-ids"} <= flags and "--dataset" not in flags
    assert all(a.help for a in p._actions if a.option_strings and a.dest != "help")
    args = p.parse_args(["--interactions", str(log), "--name", "cli", "--event-order", "view,click"])
    assert (args.separator, args.unknown_items, args.string_ids) == ("|", "error", False)
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "data set 'cli': 1 users, 3 items, 3 interactions" in out
    assert "events (weakest first): view 2, click 1" in out and "strong events: click" in out
    with pytest.raises(InputError, match="--name NAME is required"):
        run(p.parse_args(["--interactions", str(log)]))


# ---------------------------------------------------------------- errors

def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_log(tmp_path / "nowhere.csv")
    with pytest.raises(InputError, match=r"log\.json: unknown file type; use one of .csv, .csv.gz, .tsv, "
                                         r".parquet, .pq"):
        read_log(write(tmp_path / "log.json", "{}"))
    with pytest.raises(InputError, match=r"empty\.csv: empty file"):
        read_log(write(tmp_path / "empty.csv", ""))
    with pytest.raises(InputError, match=r"header\.csv: no rows"):
        read_log(write(tmp_path / "header.csv", "user_id,item_id\n"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(InputError, match=r"broken\.parquet: cannot read as Parquet"):
        read_log(tmp_path / "broken.parquet")
    (tmp_path / "binary.csv").write_bytes(b"user_id,item_id\n1,\xff\xfe\n")
    with pytest.raises(InputError, match=r"binary\.csv: cannot read as CSV"):
        read_log(tmp_path / "binary.csv")
    with pytest.raises(InputError, match=r"ragged\.csv: 2 rows do not have the header's 2 fields "
                                         r"\(row 2: 3 fields '3,4,5', row 4: 1 fields '8'\)"):
        read_log(write(tmp_path / "ragged.csv", "user_id,item_id\n1,2\n3,4,5\n6,7\n8\n"))


def test_missing_columns(tmp_path):
    f = write(tmp_path / "log.csv", "user,movie,rating\n1,2,3\n")
    with pytest.raises(InputError, match=r"log\.csv: missing columns 'user_id', 'item_id'; the file has "
                                         r"'user', 'movie', 'rating'"):
        read_log(f)
    with pytest.raises(InputError, match=r"items\.csv: missing column 'item_id'; the file has 'id', 'name'"):
        read_table(write(tmp_path / "items.csv", "id,name\n1,x\n"), "item_id")


def test_timestamp_errors(tmp_path):
    bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\n1,1,2024-03-01\n1,2,yesterday\n"
                "1,3,2024-13-01\n1,4,5\n")
    with pytest.raises(InputError, match=r"bad\.csv: column 'timestamp' has values that are neither Unix "
                                         r"seconds nor ISO 8601 times in 2 rows \(row 2: 'yesterday', "
                                         r"row 3: '2024-13-01'\)"):
        read_log(bad)
    ms = write(tmp_path / "ms.csv", "user_id,item_id,timestamp\n1,1,1709294400\n1,2,1709294400000\n")
    with pytest.raises(InputError, match=r"ms\.csv: column 'timestamp' has values that look like "
                                         r"milliseconds in 1 row \(row 2: '1709294400000'\); .*divide by 1000"):
        read_log(ms)
    neg = write(tmp_path / "neg.csv", "user_id,item_id,timestamp\n1,1,-5\n1,2,1969-12-31\n1,3,7\n")
    with pytest.raises(InputError, match=r"neg\.csv: column 'timestamp' has times before 1970 .* in 2 rows "
                                         r"\(row 1: '-5', row 2: '1969-12-31'\)"):
        read_log(neg)
    gap = write(tmp_path / "gap.csv", "user_id,item_id,timestamp\n1,1,5\n1,2,\n,3,\n1,4,\n")
    with pytest.raises(InputError, match=r"gap\.csv: column 'timestamp' is empty in 2 rows \(rows 2, 4\); "
                                         r"every interaction needs a time to be ordered"):
        read_log(gap)  # row 3 has no user_id: dropped, so its empty time is no error
    pq.write_table(pa.table({"user_id": [1, 1], "item_id": [1, 2],
                             "timestamp": pa.array([5, 1_700_000_000_000])}), tmp_path / "ms.parquet")
    with pytest.raises(InputError, match=r"ms\.parquet: column 'timestamp' .* milliseconds .*row 2: "
                                         r"1700000000000"):
        read_log(tmp_path / "ms.parquet")


def test_missing_event_is_an_error(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id,event\n1,1,view\n1,2, \n1,3,click\n")
    with pytest.raises(InputError, match=r"log\.csv: column 'event' is empty in 1 row \(row 2\); every "
                                         r"interaction needs an event to be typed"):
        read_log(f)


def test_id_errors(tmp_path):
    mixed = write(tmp_path / "log.csv", "user_id,item_id\n1,10\n1,abc\n1,12\n1,x-1\n")
    with pytest.raises(InputError, match=r"log\.csv: column 'item_id' mixes integer ids and other ids: not "
                                         r"integers in 2 rows \(row 2: 'abc', row 4: 'x-1'\); .*--string-ids"):
        read_log(mixed)
    assert read_log(mixed, string_ids=True)[0].item.tolist() == ["10", "abc", "12", "x-1"]
    neg = write(tmp_path / "neg.csv", "user_id,item_id\n-3,10\n1,-1\n1,12\n")
    with pytest.raises(InputError, match=r"neg\.csv: column 'item_id' has negative ids in 1 row \(row 2: -1\); "
                                         r"item ids must be 0 or more \(-1 pads requests\)"):
        read_log(neg)
    items = write(tmp_path / "items.csv", "item_id,kind\n1,a\n2,b\n1.5,c\n")
    with pytest.raises(InputError, match=r"items\.csv: column 'item_id' mixes .* \(row 3: '1.5'\)"):
        read_table(items, "item_id")
    empty = write(tmp_path / "users.csv", "user_id,country\n1,DE\n,FR\n")
    with pytest.raises(InputError, match=r"users\.csv: column 'user_id' is empty in 1 row \(row 2\)"):
        read_table(empty, "user_id")
    pq.write_table(pa.table({"item_id": ["a"], "tags": pa.array([["x", "y"]])}), tmp_path / "items.parquet")
    with pytest.raises(InputError, match=r"items\.parquet: column 'tags' has the Parquet type list<"):
        read_table(tmp_path / "items.parquet", "item_id")


def test_data_set_name_and_option_errors(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id,event\n1,1,4\n1,2,5\n1,3,3\n")
    with pytest.raises(InputError, match="'ml-1m' is a built-in data set"):
        build_dataset("ml-1m", f)
    with pytest.raises(InputError, match="name: 'My Shop' must be 1-64 lowercase letters"):
        build_dataset("My Shop", f)
    with pytest.raises(InputError, match=r"log\.csv: --event-order names event types, but the file has "
                                         r"numeric events"):
        build_dataset("ratings", f, event_order="view,buy")
    with pytest.raises(InputError, match=r"strong event: 'buy' is not one of the events \['3', '4', '5'\]"):
        build_dataset("ratings", f, strong_event="buy")
    assert not D.cache_path("ratings").exists()


def test_the_catalogue_maps_exact_ids_both_ways():
    """The served id mapping (grank.validation.Catalogue): exact bytes, padding both ways, no
    fixed-width copy of a request, unknown ids quoted short."""
    from grank.validation import Catalogue
    c = Catalogue(["a", "b", "sku-1"], ["A", "B", "Shoe"])
    dense, err = c.to_dense(np.array([[b"", b"a", b"sku-1"]], dtype=object))
    assert err is None and dense.tolist() == [[0, 1, 3]]
    assert c.to_dense(np.array([[b"a", b"sku-1\x00"]], dtype=object))[1].startswith("history_ids: item 'sku-1\\x00'")
    err = c.to_dense(np.array([[b"x" * 100_000]], dtype=object))[1]
    assert "(shortened) is not in the served catalogue (3 items) at row 0 slot 0" in err and len(err) < 200
    assert c.to_own(np.array([[0, 3]])).tolist() == [[b"", b"sku-1"]]
    assert c.names_of(np.array([[3, 0]])).tolist() == [[b"Shoe", b""]]
    n = Catalogue([5, 7, 9])
    assert n.to_dense(np.array([[-1, 5, 9]]))[0].tolist() == [[0, 1, 3]]
    assert "item 6 is not in the served catalogue" in n.to_dense(np.array([[-1, 6, 9]]))[1]
    assert n.to_own(np.array([[0, 2]])).tolist() == [[-1, 7]]
