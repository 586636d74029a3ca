"""Loaders on the real ML-100K file, and on small fixtures in the formats we cannot get here."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedrec.data import LOADERS, DataError, DatasetSpec, apply_feedback_mode, load_log

ML100K_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


def test_movielens_100k_real_file(ml100k_dir, ml100k_log):
    assert hashlib.sha256((ml100k_dir / "u.data").read_bytes()).hexdigest() == ML100K_SHA256
    log = ml100k_log
    assert (len(log), log.num_users, log.num_items) == (100_000, 943, 1682)
    # First line of u.data: "196 242 3 881250949"; raw ids are kept beside the dense ones.
    assert (log.user_ids[log.users[0]], log.item_ids[log.items[0]]) == (196, 242)
    assert (log.ratings[0], log.timestamps[0]) == (3.0, 881250949)
    assert np.bincount(log.users).min() >= 20
    assert set(np.unique(log.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert log.notes == ()


def test_movielens_1m_dat_format(tmp_path):
    (tmp_path / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    log = LOADERS.get("movielens_1m")(tmp_path)  # a folder is resolved to ratings.dat
    assert (len(log), log.num_users, log.num_items) == (3, 2, 2)
    assert list(log.item_ids) == [661, 1193]
    assert list(log.items) == [1, 0, 1]
    assert list(log.ratings) == [5.0, 3.0, 4.0]


def test_movielens_csv_format_with_header(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    log = LOADERS.get("movielens_csv")(path)
    assert list(log.ratings) == [2.5, 3.0] and list(log.timestamps) == [1260759144, 1260759179]


def test_generic_tsv_with_string_ids_and_iso_dates(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text(
        "who\twhat\twhen\nalice\tbook-1\t2024-01-02T10:00:00\nbob\tbook-1\t2024-01-03\n"
        "alice\tpen\t1700000000\n"
    )
    log = LOADERS.get("generic")(
        path, separator="\t", user_column="who", item_column="what", timestamp_column="when"
    )
    assert list(log.user_ids) == ["alice", "bob"] and list(log.item_ids) == ["book-1", "pen"]
    assert log.ratings is None
    assert log.timestamps[0] == np.datetime64("2024-01-02T10:00:00", "s").astype(np.int64)


TAB_LOG = "user\titem\tplays\nu1\ta\t3\nu1\tb\t12\nu2\ta\t1\n"


@pytest.mark.parametrize("typed", ["\\t", "tab", "TAB", "\t", None])
def test_tab_separator_as_typed_on_a_command_line(tmp_path, typed):
    """A shell gives ``separator='\\t'`` as backslash-t; 'tab' and no separator at all (the file
    tells) work too."""
    path = tmp_path / "log.txt"
    path.write_text(TAB_LOG)
    log = LOADERS.get("generic")(path, separator=typed, rating_column="plays")
    assert (len(log), log.num_users, log.num_items) == (3, 2, 2)
    assert list(log.ratings) == [3.0, 12.0, 1.0]


@pytest.mark.parametrize(
    ("text", "expected_users"),
    [
        ("user,item\nu1,a\nu2,b\n", 2),
        ("user;item\nu1;a\nu1;b\n", 1),
        ("user item weight\n1 10 3\n2 11 5\n3 10 1\n", 3),
        ("user::item\n1::10\n2::10\n", 2),
    ],
)
def test_separator_is_sniffed_when_not_given(tmp_path, text, expected_users):
    path = tmp_path / "log.dat"
    path.write_text(text)
    assert LOADERS.get("generic")(path).num_users == expected_users


def test_a_tsv_file_is_read_with_tabs_even_if_commas_appear(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\nsmith, j.\ta\nlee, k.\tb\n")
    assert list(LOADERS.get("generic")(path).user_ids) == ["lee, k.", "smith, j."]


def test_an_unsniffable_file_says_which_option_to_set(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("useritem\nu1a\n")
    with pytest.raises(DataError, match="set dataset.options.separator"):
        LOADERS.get("generic")(path)


def test_generic_without_header_uses_given_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u1;i1;4\nu2;i1;5\n")
    log = LOADERS.get("generic")(
        path, separator=";", header=False, columns=["user", "item", "stars"], rating_column="stars"
    )
    assert list(log.ratings) == [4.0, 5.0]


def test_generic_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user": [7, 7, 9], "item": ["a", "b", "a"], "rating": [1.0, 5.0, 3.0]}), path
    )
    log = LOADERS.get("generic")(path, rating_column="rating")
    assert (log.num_users, log.num_items, len(log)) == (2, 2, 3)
    assert list(log.ratings) == [1.0, 5.0, 3.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no data rows"),
        ("1\t2\t3\n", r"u\.data line 1: expected 4 fields separated by '\\t'"),
        ("1\t2\t3\t4\n1,2,3,4\n", "u.data line 2: expected 4 fields"),
        ("1\t2\tabc\t4\n", "u.data line 1: rating 'abc' is not a number"),
        ("1\t2\t3\t4\n1\t3\tnan\t4\n", "u.data line 2: rating 'nan' is not a finite number"),
        ("-5\t2\t3\t4\n", "u.data line 1: user id -5 is negative"),
        ("1\tx2\t3\t4\n", "u.data line 1: item id 'x2' is not an integer"),
        (
            "1\t2\t3\t4\n99999999999999999999\t2\t3\t4\n",
            "u.data line 2: user id 99999999999999999999 is out of range",
        ),
        ("1\t2\t3\tyesterday\n", "u.data line 1: timestamp 'yesterday' is neither"),
        ("\t2\t3\t4\n", "u.data line 1: user id is empty"),
    ],
)
def test_bad_movielens_rows_name_file_and_line(tmp_path, content, message):
    (tmp_path / "u.data").write_text(content)
    with pytest.raises(DataError, match=message):
        LOADERS.get("movielens_100k")(tmp_path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item\nu1,i1\nu2,caf\xe9\n")
    with pytest.raises(DataError, match=r"log.csv line 3: byte 0xe9 is not valid utf-8"):
        LOADERS.get("generic")(path)
    # The same file read with its real encoding is fine.
    assert len(LOADERS.get("generic")(path, encoding="latin-1")) == 2


def test_missing_named_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,product\nu1,i1\n")
    with pytest.raises(DataError, match=r"log.csv: no column 'item' \(found: user, product\)"):
        LOADERS.get("generic")(path)


def test_missing_file_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        LOADERS.get("movielens_1m")(tmp_path / "nope")
    with pytest.raises(DataError, match="set dataset.path"):
        LOADERS.get("movielens_1m")(None)


def test_duplicates_keep_the_latest_and_say_so(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t2\t200\n1\t10\t5\t100\n2\t10\t4\t150\n1\t10\t3\t300\n")
    log = LOADERS.get("movielens_100k")(tmp_path)
    assert len(log) == 2
    row = np.flatnonzero(log.users == 0)[0]
    assert (log.ratings[row], log.timestamps[row]) == (3.0, 300)  # the latest re-rating wins
    assert log.notes and "dropped 2 duplicate (user, item) rows" in log.notes[0]
    with pytest.raises(DataError, match="2 duplicate"):
        LOADERS.get("movielens_100k")(tmp_path, on_duplicate="error")


def test_implicit_threshold_drops_users_with_no_positive(tmp_path):
    (tmp_path / "u.data").write_text(
        "1\t10\t5\t1\n1\t11\t4\t2\n2\t10\t1\t3\n3\t12\t2\t4\n3\t10\t4\t5\n"
    )
    log = load_log(
        DatasetSpec(
            name="movielens_100k", path=str(tmp_path), positive_threshold=4, min_user_interactions=1
        )
    )
    assert list(log.user_ids) == [1, 3]  # user 2 rated nothing >= 4
    assert log.ratings is None and len(log) == 3
    assert log.num_items == 3  # items keep their index space
    assert any("dropped 1 users with no interactions" in n for n in log.notes)
    with pytest.raises(DataError, match="no rating is >= 6"):
        load_log(DatasetSpec(name="movielens_100k", path=str(tmp_path), positive_threshold=6))


def test_explicit_mode_requires_ratings(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\nu1,i1\n")
    log = LOADERS.get("generic")(path)
    with pytest.raises(DataError, match="explicit mode needs ratings"):
        apply_feedback_mode(log, "explicit")


def test_unknown_loader_and_unknown_option():
    with pytest.raises(
        ValueError, match="unknown dataset loader 'movielens_2m'; accepted: .*movielens_100k"
    ):
        load_log(DatasetSpec(name="movielens_2m"))
    with pytest.raises(ValueError, match="takes no option colour"):
        load_log(DatasetSpec(name="synthetic", options={"colour": "red"}))
