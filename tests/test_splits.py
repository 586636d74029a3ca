"""Every split rule on hand-made logs where the answer is known, on the ML-100K-shaped log, and
leave-one-out on the real ML-100K file."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data import DataError, Split, build_log, make_split, split_by_user


def small_log():
    # user a: 4 rows, two of them at the latest timestamp (file order breaks the tie);
    # user b: 1 row (cannot give up a test row); user c: 3 rows.
    return build_log(
        np.array(["a", "a", "a", "a", "b", "c", "c", "c"]),
        np.array([1, 2, 3, 4, 1, 5, 6, 7]),
        np.array([5, 4, 3, 2, 1, 5, 5, 5], dtype=np.float32),
        np.array([10, 40, 40, 20, 5, 3, 2, 1]),
        source="small",
    )


def items_of(log, user_raw):
    user = list(log.user_ids).index(user_raw)
    return sorted(int(log.item_ids[i]) for i in log.items[log.users == user])


def test_leave_one_out_takes_the_latest_and_breaks_ties_by_file_order():
    split = make_split(small_log(), "leave_one_out", num_negatives=1)
    assert items_of(split.test, "a") == [3]  # items 2 and 3 share t=40; 3 comes later in the file
    assert items_of(split.test, "c") == [5]  # latest timestamp, though first in the file
    assert items_of(split.test, "b") == []  # a single interaction stays in training
    assert items_of(split.train, "b") == [1]
    assert any("1 users with a single interaction are train-only" in n for n in split.train.notes)


def test_leave_one_out_on_ml100k(ml100k_log):
    split = make_split(ml100k_log, "leave_one_out", seed=0)
    assert len(split.test) == 943 and len(split.train) == 100_000 - 943
    assert len(split.test_users) == 943
    latest = np.zeros(943, dtype=np.int64)
    np.maximum.at(latest, ml100k_log.users, ml100k_log.timestamps)
    assert np.array_equal(split.test.timestamps[np.argsort(split.test.users)], latest)


def test_random_leave_one_out_holds_out_one_seeded_row_per_user_without_timestamps():
    log = small_log()
    untimed = build_log(
        log.user_ids[log.users], log.item_ids[log.items], log.ratings, None, source="untimed"
    )
    with pytest.raises(DataError, match="random_leave_one_out"):
        make_split(untimed, "leave_one_out", num_negatives=1)
    first = make_split(untimed, "random_leave_one_out", seed=5, num_negatives=1)
    assert np.array_equal(
        first.test.items,
        make_split(untimed, "random_leave_one_out", seed=5, num_negatives=1).test.items,
    )
    counts = np.bincount(first.test.users, minlength=untimed.num_users)
    sizes = np.bincount(untimed.users)
    assert list(counts) == [int(n >= 2) for n in sizes]  # one per user who can spare one
    held_out = [
        {
            items_of(
                make_split(untimed, "random_leave_one_out", seed=s, num_negatives=1).test, "a"
            )[0]
            for s in range(30)
        }
    ][0]
    assert len(held_out) > 1  # a different row for other seeds: random, not the last one


def test_temporal_ratio_keeps_the_latest_fraction():
    split = make_split(small_log(), "temporal_ratio", test_ratio=0.5, num_negatives=1)
    assert items_of(split.test, "a") == [2, 3]  # the two rows at t=40
    assert items_of(split.test, "c") == [5, 6]  # round(1.5) = 2 of 3, leaving one to train
    assert items_of(split.train, "c") == [7]


def test_random_ratio_is_per_user_and_seeded(ml100k_shaped_log):
    ml100k_log = ml100k_shaped_log
    first = make_split(ml100k_log, "random_ratio", seed=3, test_ratio=0.2)
    again = make_split(ml100k_log, "random_ratio", seed=3, test_ratio=0.2)
    other = make_split(ml100k_log, "random_ratio", seed=4, test_ratio=0.2)
    assert np.array_equal(first.test.items, again.test.items)
    assert np.array_equal(first.negatives, again.negatives)
    assert not np.array_equal(first.test.items, other.test.items)
    per_user_all = np.bincount(ml100k_log.users)
    per_user_test = np.bincount(first.test.users, minlength=943)
    expected = np.minimum(per_user_all - 1, np.maximum(1, np.floor(per_user_all * 0.2 + 0.5)))
    assert np.array_equal(per_user_test, expected)
    assert len(first.train) + len(first.test) == len(ml100k_log)


def test_negatives_are_fixed_by_seed_and_never_seen(ml100k_shaped_log):
    ml100k_log = ml100k_shaped_log
    split = make_split(ml100k_log, "leave_one_out", seed=0, num_negatives=99)
    assert split.negatives.shape == (943, 99)
    for row, user in enumerate(split.negative_users):
        seen = set(ml100k_log.items[ml100k_log.users == user])
        negatives = split.negatives[row]
        assert len(set(negatives)) == 99 and not seen & set(negatives)
    again = make_split(ml100k_log, "leave_one_out", seed=0)
    assert np.array_equal(split.negatives, again.negatives)


def test_split_round_trips_through_npz_without_pickle(tmp_path, ml100k_shaped_log):
    ml100k_log = ml100k_shaped_log
    split = make_split(ml100k_log, "leave_one_out", seed=1)
    split.save(tmp_path / "split.npz")
    loaded = Split.load(tmp_path / "split.npz")
    for a, b in ((split.train, loaded.train), (split.test, loaded.test)):
        assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
        assert np.array_equal(a.ratings, b.ratings) and np.array_equal(a.timestamps, b.timestamps)
    assert np.array_equal(split.negatives, loaded.negatives)
    assert (loaded.name, loaded.seed) == ("leave_one_out", 1)
    assert np.array_equal(loaded.negatives_of(5), split.negatives_of(5))


def test_time_based_splits_need_timestamps_and_negatives_need_room():
    log = build_log(np.array([1, 1, 2, 2]), np.array([1, 2, 1, 2]), None, None, source="nots")
    for name in ("leave_one_out", "temporal_ratio"):
        with pytest.raises(DataError, match=f"split '{name}' needs timestamps"):
            make_split(log, name)
    with pytest.raises(DataError, match="all but 0 items"):
        make_split(log, "random_ratio", num_negatives=1)
    with pytest.raises(ValueError, match="unknown split 'by_moon'"):
        make_split(log, "by_moon")
    with pytest.raises(ValueError, match="test_ratio=1.5"):
        make_split(log, "random_ratio", test_ratio=1.5)


def test_split_by_user_gives_each_user_their_own_chronological_log():
    logs = split_by_user(small_log())
    assert [len(x) for x in logs] == [4, 1, 3]
    assert list(logs[2].timestamps) == [1, 2, 3]
    assert list(logs[0].timestamps) == [10, 20, 40, 40]
