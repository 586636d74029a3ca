"""The sparse cohort engine: the dense engine's numbers without DP, its distribution with DP-SGD
(lazy noise), and chunks sized by memory."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_cohort import _items, _users

from fedrec.model.mf import ModelSpec
from fedrec.privacy.dp_sgd import PrivacySpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.engine import train_cohort
from fedrec.training.closed_form.memory import MAX_CHUNK_USERS, chunks_within
from fedrec.training.closed_form.sparse import train_cohort_sparse
from fedrec.training.state import CohortMember, DeviceState, LocalData

SPEC = ModelSpec(embedding_dim=8, init_std=0.1)


def _both(items, members, training, privacy, explicit, **options):
    common = dict(
        model_spec=options.pop("spec", SPEC),
        training=training,
        privacy=privacy,
        explicit=explicit,
        server_round=1,
        **options,
    )
    return train_cohort(items, members, chunk_size=4, **common), train_cohort_sparse(
        items, members, chunk_size=4, **common
    )


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_without_dp_it_is_the_dense_engine_draw_for_draw(optimizer: str, explicit: bool) -> None:
    items, users = _items(40, 8, explicit), _users(40, explicit)
    training = LocalTrainingSpec(
        epochs=2, batch_size=32, lr=0.05, optimizer=optimizer, l2=0.01, num_negatives=2
    )
    members = [CohortMember(k, d, DeviceState(), 100 + k) for k, d in enumerate(users)]
    dense, sparse = _both(items, members, training, PrivacySpec(), explicit, keep_updates=True)
    for key, update in dense.updates.items():
        for name, array in update.items():
            np.testing.assert_allclose(sparse.updates[key][name], array, atol=1e-7)
    for name, array in dense.update_sum.items():
        np.testing.assert_allclose(sparse.update_sum[name], array, atol=1e-6)
    for a, b in zip(dense.outcomes, sparse.outcomes, strict=True):
        assert (a.key, a.status, a.steps, a.loss) == (b.key, b.status, b.steps, b.loss)
        for name, array in a.state.user_arrays.items():
            np.testing.assert_array_equal(b.state.user_arrays[name], array)


def _dp_case(num_negatives: int = 1):
    """One user (5 interactions) in a 12-item catalogue: 6 noisy SGD steps, rows touched at
    some steps and not others (and, without negatives, rows never touched)."""
    items = _items(12, 3, False)
    data = LocalData(num_items=12, train_items=np.arange(5), train_ratings=None)
    training = LocalTrainingSpec(
        epochs=2, batch_size=2, lr=0.5, optimizer="sgd", l2=0.01, num_negatives=num_negatives
    )
    privacy = PrivacySpec(mode="record", noise_multiplier=1.0, max_grad_norm=1.0)
    return items, data, training, privacy


def _draws(
    engine, seeds, *, users: int = 1, keep_updates: bool = True, num_negatives: int = 1
) -> np.ndarray:
    items, data, training, privacy = _dp_case(num_negatives)
    rows = []
    for seed in seeds:
        members = [CohortMember(k, data, DeviceState(), seed * 7 + k) for k in range(users)]
        result = engine(
            items,
            members,
            model_spec=ModelSpec(embedding_dim=3, init_std=0.1),
            training=training,
            privacy=privacy,
            explicit=False,
            server_round=1,
            keep_updates=keep_updates,
        )
        arrays = result.updates[0] if keep_updates else result.update_sum
        rows.append(np.concatenate([arrays[name].ravel() for name in sorted(arrays)]))
    return np.array(rows)


def _assert_same_distribution(per_step: np.ndarray, lazy: np.ndarray) -> None:
    """Entry by entry: a two-sample Kolmogorov-Smirnov test, an F test of the variances and a
    Welch test of the means, each at 0.1 % with Bonferroni's correction; and over all entries
    the mean variance ratio within 7 % of 1."""
    entries = per_step.shape[1]
    level = 0.001 / entries
    n, m = len(per_step), len(lazy)
    for j in range(entries):
        a, b = per_step[:, j], lazy[:, j]
        assert stats.ks_2samp(a, b).pvalue > level, f"entry {j}: KS"
        f = stats.f(m - 1, n - 1)
        ratio = b.var(ddof=1) / a.var(ddof=1)
        assert 2 * min(f.cdf(ratio), f.sf(ratio)) > level, f"entry {j}: variance ratio {ratio}"
        assert stats.ttest_ind(a, b, equal_var=False).pvalue > level, f"entry {j}: mean"
    ratios = lazy.var(0) / per_step.var(0)
    assert abs(ratios.mean() - 1) < 0.07, ratios


def test_lazy_noise_has_the_per_step_noise_distribution() -> None:
    """Every entry of the released update (rows touched often, rarely, never) against the
    per-step reference: same distribution by three tests (different draws, same law)."""
    per_step = _draws(train_cohort, range(500))
    lazy = _draws(train_cohort_sparse, range(10_000, 10_500))
    _assert_same_distribution(per_step, lazy)
    # Without negatives items 5-11 are never touched: pure noise, 6 steps × (lr·σC / B)² with
    # B = int(5 · 1/3) = 1, i.e. variance 6 × 0.25 per entry.
    positives_only = _draws(train_cohort_sparse, range(400), num_negatives=0)
    untouched = positives_only[:, 12 + 3 * 5 :]  # items 5-11's embeddings (biases come first)
    assert abs(untouched.var() / 1.5 - 1) < 0.1
    assert abs(untouched.mean()) < 0.05


def test_the_chunk_sum_of_untouched_rows_has_the_summed_variance() -> None:
    """Without ``keep_updates`` the users' noise on rows they did not touch is one draw per row
    for the chunk: the sum's distribution must still be the per-step one."""
    per_step = _draws(train_cohort, range(300), users=3, keep_updates=False)
    lazy = _draws(train_cohort_sparse, range(5_000, 5_300), users=3, keep_updates=False)
    _assert_same_distribution(per_step, lazy)


def test_the_distribution_tests_catch_a_wrong_noise_scale() -> None:
    """The check above has teeth: lazy noise whose variance is off by a third fails it."""
    per_step = _draws(train_cohort, range(300), users=3, keep_updates=False)
    mean = per_step.mean(0)
    wrong = mean + (per_step[::-1] - mean) * np.sqrt(4 / 3)
    with pytest.raises(AssertionError):
        _assert_same_distribution(per_step, wrong)


def test_dp_charges_the_same_budget_as_the_dense_engine() -> None:
    items, users = _items(40, 8, False), _users(40, False)
    training = LocalTrainingSpec(epochs=2, batch_size=8, lr=0.05, optimizer="sgd", num_negatives=2)
    privacy = PrivacySpec(mode="record", noise_multiplier=1.2, max_grad_norm=0.5)
    members = [CohortMember(k, d, DeviceState(), k) for k, d in enumerate(users)]
    dense, sparse = _both(items, members, training, privacy, False)
    for a, b in zip(dense.outcomes, sparse.outcomes, strict=True):
        assert (a.status, a.steps, a.epsilon) == (b.status, b.steps, b.epsilon)
        assert a.state.ledger.entries == b.state.ledger.entries
    assert sparse.weight_sum == dense.weight_sum == len(users)


def test_user_level_clipping_sees_the_whole_noisy_update() -> None:
    items, users = _items(40, 8, False), _users(40, False)
    training = LocalTrainingSpec(epochs=1, batch_size=8, lr=0.5, optimizer="sgd", num_negatives=2)
    privacy = PrivacySpec(mode="both", noise_multiplier=1.0, max_grad_norm=0.5, user_clip_norm=0.3)
    members = [CohortMember(k, d, DeviceState(), k) for k, d in enumerate(users)]
    result = train_cohort_sparse(
        items,
        members,
        model_spec=SPEC,
        training=training,
        privacy=privacy,
        explicit=False,
        keep_updates=True,
    )
    for update in result.updates.values():
        norm = np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in update.values()))
        assert norm <= 0.3 * (1 + 1e-6)
        assert np.count_nonzero(update["item_embedding.weight"]) == 40 * 8  # noise everywhere


def test_dp_with_adam_is_refused_with_the_way_out() -> None:
    items, users = _items(40, 8, False), _users(40, False)
    with pytest.raises(ValueError, match="trainer=closed_form"):
        train_cohort_sparse(
            items,
            [CohortMember(0, users[0], DeviceState(), 0)],
            model_spec=SPEC,
            training=LocalTrainingSpec(optimizer="adam"),
            privacy=PrivacySpec(mode="record", noise_multiplier=1.0),
            explicit=False,
        )


def test_chunks_follow_the_memory_not_a_fixed_count() -> None:
    rows = [100] * 50 + [10] * 50
    chunks = list(chunks_within(rows, row_bytes=4, memory_bytes=4 * 100 * 10))
    assert chunks[0] == (0, 10)  # 10 users of 100 rows fill the budget
    assert (50, 100) in chunks  # 50 users of 10 rows fit in one chunk
    covered = [i for start, stop in chunks for i in range(start, stop)]
    assert covered == list(range(100))
    for start, stop in chunks:
        assert (stop - start) * max(rows[start:stop]) * 4 <= 4000 or stop - start == 1
    assert list(chunks_within([10**9], row_bytes=4, memory_bytes=8)) == [(0, 1)]  # never empty
    assert list(chunks_within([1] * 3000, row_bytes=1, memory_bytes=10**9))[0] == (
        0,
        MAX_CHUNK_USERS,
    )
    assert list(chunks_within([5] * 5, row_bytes=4, chunk_size=2)) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="chunk_size=-1"):
        list(chunks_within([1], row_bytes=4, chunk_size=-1))
