"""The MF model's parameter groups, and the centralized reference on the ML-100K-shaped log (and
on the real ML-100K ratings, where the files are)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data import DatasetSpec, SplitSpec, load_split
from fedrec.eval import EvalSpec, evaluate_scores
from fedrec.jobs.train import score_function
from fedrec.model import (
    ITEM_SIDE,
    USER_SIDE,
    MatrixFactorization,
    ModelSpec,
    Objective,
    TrainSpec,
    fit_centralized,
)


def test_user_side_and_item_side_are_separate_groups():
    model = MatrixFactorization(3, 5, 4, explicit=True)
    assert set(model.user_state()) == set(USER_SIDE)
    assert set(model.item_state()) == set(ITEM_SIDE)
    assert not set(model.user_state()) & set(model.item_state())
    assert set(model.state_dict()) == set(USER_SIDE) | set(ITEM_SIDE)
    implicit = MatrixFactorization(3, 5, 4)
    assert set(implicit.item_state()) == {"item_embedding.weight", "item_bias.weight"}
    assert set(implicit.user_state()) == {"user_embedding.weight"}


def test_forward_matches_the_formula_and_penalty_by_hand():
    model = MatrixFactorization(2, 3, 2, explicit=True, global_mean=3.0)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 3.0]]))
        model.item_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
        model.user_bias.weight.copy_(torch.tensor([[-1.0], [0.5]]))
    out = model(torch.tensor([0]), torch.tensor([[1, 2]]), with_penalty=True)
    # scores: <p0, q1> + b1 + bu0 + mu = 1.5 + 0.2 - 1 + 3 ; <p0, q2> + 0.3 - 1 + 3 = 6 + 2.3
    assert out[0, :2].tolist() == pytest.approx([3.7, 8.3])
    # penalty: |p0|^2 + |q1|^2 + |q2|^2 + b1^2 + b2^2 + bu0^2 = 5 + 0.5 + 9 + 0.04 + 0.09 + 1
    assert out[0, 2].item() == pytest.approx(15.63)
    all_scores = model.score_all_items(torch.tensor([0]))
    assert all_scores[0, 1:].tolist() == pytest.approx([3.7, 8.3])


def test_load_arrays_checks_names_and_shapes():
    model = MatrixFactorization(2, 3, 2)
    with pytest.raises(ValueError, match="shape"):
        model.load_arrays({"item_bias.weight": np.zeros((4, 1), dtype=np.float32)})
    with pytest.raises(KeyError, match="no parameter"):
        model.load_arrays({"user_bias.weight": np.zeros((2, 1), dtype=np.float32)})
    model.load_arrays({"item_bias.weight": np.ones((3, 1), dtype=np.float32)})
    assert model.item_state()["item_bias.weight"].sum() == 3


def test_implicit_negatives_are_drawn_on_the_spot():
    objective = Objective(explicit=False, num_negatives=3, num_items=10)
    candidates, targets = objective.inputs_and_targets(
        torch.tensor([4, 7]), torch.ones(2), torch.Generator().manual_seed(0)
    )
    assert candidates.shape == targets.shape == (2, 4)
    assert candidates[:, 0].tolist() == [4, 7]
    assert targets[:, 0].tolist() == [1.0, 1.0] and targets[:, 1:].sum() == 0


def test_centralized_reference_learns_implicit_feedback(ml100k_shaped_split):
    split = ml100k_shaped_split
    spec = EvalSpec(full_metrics=["ndcg@10"], sampled_metrics=["hr@10"])
    untrained = fit_centralized(
        split.train, ModelSpec(32), TrainSpec(epochs=1, lr=1e-9), explicit=False
    )
    before = evaluate_scores(score_function(untrained), split, spec)
    model = fit_centralized(
        split.train, ModelSpec(32), TrainSpec(epochs=4, batch_size=1024, l2=0.001), explicit=False
    )
    after = evaluate_scores(score_function(model), split, spec)
    assert before["ndcg@10"] < 0.02 and before["sampled_hr@10"] < 0.2  # chance is ~0.1 sampled
    assert after["ndcg@10"] > 0.04 and after["sampled_hr@10"] > 0.4  # 0.063 and 0.475 here


def test_centralized_reference_learns_ml100k_ratings(ml100k_dir):
    split = load_split(
        DatasetSpec(name="movielens_100k", mode="explicit", split=SplitSpec(name="random_ratio"))
    )
    model = fit_centralized(
        split.train,
        ModelSpec(32, 0.05),
        TrainSpec(epochs=3, batch_size=256, lr=0.002, l2=0.1),
        explicit=True,
    )
    rmse = evaluate_scores(score_function(model), split, EvalSpec([], [], rating_metrics=True))[
        "rmse"
    ]
    global_mean_rmse = float(
        np.sqrt(np.mean((split.test.ratings - split.train.ratings.mean()) ** 2))
    )
    assert rmse < 0.96 < global_mean_rmse


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="optimizer='lbfgs'"):
        TrainSpec(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr=0"):
        TrainSpec(lr=0)
    with pytest.raises(ValueError, match="num_negatives=-1"):
        Objective(explicit=False, num_negatives=-1, num_items=5)
    # 0 negatives: the positive alone (the one-release popularity recipe's objective)
    candidates, targets = Objective(
        explicit=False, num_negatives=0, num_items=5
    ).inputs_and_targets(torch.tensor([3, 1]), torch.ones(2), None)
    assert candidates.tolist() == [[3], [1]] and targets.tolist() == [[1.0], [1.0]]
