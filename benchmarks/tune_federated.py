"""In-process FedAvg with the real train_round/evaluate_user, to tune quickly (no Flower).

Usage: ``python benchmarks/tune_federated.py "dict(rounds=20, lr=0.01, server_lr=400.0)"``

Keys: any field of ``LocalTrainingSpec`` (epochs, batch_size, lr, optimizer, l2,
num_negatives), plus

- ``rounds``, ``frac`` (share of clients sampled per round), ``server_lr`` (the server applies
  ``items += server_lr * mean(client deltas)``: FedAvg with a server learning rate);
- ``decay``: None, or "cosine" / "cosine-server" / "cosine-local": in round r (1..R) scale
  both (or only the server / only the local) learning rate by ``0.5 * (1 + cos(pi*(r-1)/R))``,
  as ``strategy.server_lr_schedule`` / ``strategy.local_lr_schedule`` do in a federation;
- ``dim``, ``std`` (initial embedding std), ``noise`` (None = no DP, else DP-SGD's noise
  multiplier), ``clip`` (DP-SGD's clipping norm, default 1.0), ``target_eps`` (each device
  solves its own σ so that ``rounds`` rounds stay within it, as ``privacy=budget`` does;
  implies DP), ``refit`` (evaluation-time refit epochs), ``refit_lr``, ``refit_zero`` (True:
  the refit starts from a zero user embedding instead of the kept one), ``seed`` (initial
  table, client sampling and every device's generator; default 0), ``emb_scale`` (the server
  step on the item embeddings as a share of the one on the biases; default 1);
- ``every`` (evaluate every that many rounds; always at the last), ``val`` (True: score on a
  validation split carving each user's latest training item, ``make_split(split.train,
  "leave_one_out", seed=0)``, for choosing without looking at the test items).

- ``server``: "avg" (default: the rule above) or "adam" (FedAdam as Flower computes it, with
  ``server_lr`` as eta, ``tau`` 1e-3, betas 0.9/0.99).
- ``dataset``: a config of ``configs/dataset/`` (default ``ml100k``; e.g. ``synthetic_ml1m``).
- ``user_eps`` (user-level DP instead: every update clipped to ``user_clip``, default 0.4, and
  the noise of DP-FedAvg at q = 1 added to their sum, z solved for ``user_eps`` over ``rounds``
  rounds, then divided by the number of users, as ``privacy=user`` with all users per round);
  needs ``frac=1``.

Every client trains with ``train_cohort`` (the cohort engine: per user the same numbers as
``train_round``, many times faster); the server only sees the average of their deltas.
"""

import math
import sys
import time

import numpy as np
import torch

from fedrec.cli import compose
from fedrec.client.data_source import SplitUserSource
from fedrec.client.trainer import DeviceState, LocalEvalSpec, LocalTrainingSpec, evaluate_user
from fedrec.cohort import CohortMember, train_cohort
from fedrec.data import load_split, make_split
from fedrec.eval import average_over_users
from fedrec.model import ModelSpec
from fedrec.model.mf import random_item_arrays
from fedrec.privacy import PrivacySpec, epsilon_spent
from fedrec.privacy.accounting import solve_noise_multiplier
from fedrec.privacy.user_level import noisy_mean_of_sum

torch.set_num_threads(1)
SHOWN = ("ndcg@10", "recall@20", "sampled_hr@10")


def main(kw: dict) -> None:
    rounds, server_lr = kw.pop("rounds", 20), kw.pop("server_lr", 1.0)
    frac, every = kw.pop("frac", 1.0), kw.pop("every", 5)
    dim, std, noise = kw.pop("dim", 64), kw.pop("std", 0.1), kw.pop("noise", None)
    refit, decay, val = kw.pop("refit", 0), kw.pop("decay", None), kw.pop("val", False)
    server, tau = kw.pop("server", "avg"), kw.pop("tau", 1e-3)
    clip, target_eps = kw.pop("clip", 1.0), kw.pop("target_eps", None)
    refit_lr, refit_zero = kw.pop("refit_lr", 0.05), kw.pop("refit_zero", False)
    seed, emb_scale = kw.pop("seed", 0), kw.pop("emb_scale", 1.0)
    dataset = kw.pop("dataset", "ml100k")
    user_eps, user_clip = kw.pop("user_eps", None), kw.pop("user_clip", 0.4)
    if decay not in (None, "cosine", "cosine-server", "cosine-local"):
        raise ValueError(f"decay={decay!r}")
    split = load_split(compose("simulate", [f"dataset={dataset}"]).dataset)
    if val:
        split = make_split(split.train, "leave_one_out", seed=0)
    users = np.arange(split.train.num_users)
    source = SplitUserSource(split, users)
    datas = [source.local_data({"partition-id": p})[1] for p in range(len(users))]
    model_spec = ModelSpec(dim, std)
    base = LocalTrainingSpec(**kw)
    if target_eps is not None:
        privacy = PrivacySpec(
            mode="record",
            max_grad_norm=clip,
            target_epsilon=target_eps,
            solve_noise_multiplier=True,
            planned_rounds=rounds,
        )
    elif noise is not None:
        privacy = PrivacySpec(mode="record", noise_multiplier=noise, max_grad_norm=clip)
    elif user_eps is not None:
        if frac != 1.0:
            raise ValueError("user_eps needs frac=1 (every user, every round: q = 1)")
        privacy = PrivacySpec(mode="user", user_clip_norm=user_clip)
        user_z = solve_noise_multiplier(user_eps, privacy.delta, 1.0, rounds)
        user_rng = np.random.default_rng([seed, 1])
    else:
        privacy = PrivacySpec()
    items = random_item_arrays(split.train.num_items, dim, init_std=std, seed=seed)
    states = [DeviceState() for _ in users]
    rng = np.random.default_rng(seed)
    moments: dict = {}
    start = time.time()
    for r in range(1, rounds + 1):
        scale = 0.5 * (1 + math.cos(math.pi * (r - 1) / rounds)) if decay else 1.0
        local_scale = scale if decay in ("cosine", "cosine-local") else 1.0
        server_scale = scale if decay in ("cosine", "cosine-server") else 1.0
        training = LocalTrainingSpec(**(vars(base) | {"lr": base.lr * local_scale}))
        chosen = rng.choice(len(users), int(frac * len(users)), replace=False)
        result = train_cohort(
            items,
            [
                CohortMember(int(p), datas[p], states[p], int(seed * 10**7 + r * 10000 + p))
                for p in chosen
            ],
            model_spec=model_spec,
            training=training,
            privacy=privacy,
            explicit=False,
            server_round=r,
        )
        eps = 0.0
        for outcome in result.outcomes:
            states[outcome.key] = outcome.state
            eps = max(eps, outcome.epsilon)
        if user_eps is not None:  # the server's release: (sum of clipped updates + noise) / N
            mean = noisy_mean_of_sum(
                result.update_sum,
                like=items,
                clip_norm=user_clip,
                noise_multiplier=user_z,
                expected_clients=len(users),
                rng=user_rng,
            )
            eps = epsilon_spent([(user_z, 1.0, r)], delta=privacy.delta)
        else:
            mean = {k: v / result.weight_sum for k, v in result.update_sum.items()}
        if server == "adam":
            moments = moments or {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in items.items()}
            eta = server_lr * server_scale * math.sqrt(1 - 0.99**r) / (1 - 0.9**r)
            for k, (m, v) in moments.items():
                m[:] = 0.9 * m + 0.1 * mean[k]
                v[:] = 0.99 * v + 0.01 * mean[k] ** 2
                items[k] = items[k] + eta * m / (np.sqrt(v) + tau)
        else:
            items = {
                k: items[k]
                + server_lr * server_scale * (1.0 if "bias" in k else emb_scale) * mean[k]
                for k in items
            }
        if r % every == 0 or r == rounds:
            spec = LocalEvalSpec(refit_epochs=refit, refit_lr=refit_lr)
            metrics = average_over_users(
                evaluate_user(
                    items,
                    d,
                    DeviceState({k: np.zeros_like(v) for k, v in s.user_arrays.items()})
                    if refit_zero and s.user_arrays
                    else s,
                    model_spec=model_spec,
                    eval_spec=spec,
                    explicit=False,
                    num_negatives=4,
                    seed=0,
                )
                for d, s in zip(datas, states, strict=True)
            )
            shown = {k: round(v, 4) for k, v in metrics.items() if k in SHOWN}
            print(r, shown, "eps", round(eps, 2), f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main(eval(sys.argv[1]))  # a trusted dict literal from the command line
