"""In-process federation for quick tuning: the one round loop, no Flower.

Usage: ``python benchmarks/tune_federated.py "dict(rounds=20, lr=0.01, server_lr=400.0)"``

The rounds are :func:`fedrec.federation.loop.run_rounds` over the in-process transport: the same
sampler, device code (the closed-form trainer, per user the numbers of the Opacus round) and
server rule as ``fedrec simulate``, without Flower's per-message cost.

Keys: any field of ``LocalTrainingSpec`` (epochs, batch_size, lr, optimizer, l2,
num_negatives), plus

- ``rounds``, ``frac`` (share of clients sampled per round), ``server_lr``;
- ``server``: "avg" (default: ``items += server_lr · mean(deltas)``) or "adam" (FedAdam with
  ``server_lr`` as eta and ``tau``, default 1e-3);
- ``decay``: None, or "cosine" / "cosine-server" / "cosine-local": the cosine schedule of
  ``strategy.server_lr_schedule`` / ``strategy.local_lr_schedule`` on both or one rate;
- ``dim``, ``std`` (initial embedding std), ``noise`` (None = no DP, else DP-SGD's noise
  multiplier), ``clip`` (DP-SGD's clipping norm, default 1.0), ``target_eps`` (each device
  solves its own σ for ``rounds`` rounds, as ``privacy=budget``), ``refit`` (evaluation-time
  refit epochs), ``refit_lr``, ``seed`` (default 0);
- ``user_eps`` (user-level DP instead: updates clipped to ``user_clip``, default 0.4, z solved
  for ``user_eps`` over the rounds, as ``privacy=user``);
- ``every`` (evaluate every that many rounds; always at the last), ``val`` (True: score on a
  validation split carving each user's latest training item, ``make_split(split.train,
  "leave_one_out", seed=0)``, for choosing without looking at the test items);
- ``dataset``: a config of ``configs/dataset/`` (default ``ml100k``; e.g. ``synthetic_ml1m``).
"""

import sys
import time

import numpy as np
import torch

from fedrec.config import compose
from fedrec.data import load_split, make_split
from fedrec.federation.in_process import InProcessTransport
from fedrec.federation.loop import FederationPlan, run_rounds
from fedrec.federation.server_step import StrategySpec
from fedrec.model import ModelSpec
from fedrec.model.mf import random_item_arrays
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy import PrivacySpec
from fedrec.privacy.user_level import plan_user_level
from fedrec.protocol.settings import LocalEvalSpec, LocalTrainingSpec, RoundSettings

torch.set_num_threads(1)
SHOWN = ("ndcg@10", "recall@20", "sampled_hr@10")


def privacy_of(kw: dict, rounds: int) -> PrivacySpec:
    clip, target_eps, noise = kw.pop("clip", 1.0), kw.pop("target_eps", None), kw.pop("noise", None)
    user_eps, user_clip = kw.pop("user_eps", None), kw.pop("user_clip", 0.4)
    if target_eps is not None:
        return PrivacySpec(
            mode="record",
            max_grad_norm=clip,
            target_epsilon=target_eps,
            solve_noise_multiplier=True,
            planned_rounds=rounds,
        )
    if noise is not None:
        return PrivacySpec(mode="record", noise_multiplier=noise, max_grad_norm=clip)
    if user_eps is not None:
        return PrivacySpec(
            mode="user",
            user_clip_norm=user_clip,
            user_target_epsilon=user_eps,
            solve_user_noise_multiplier=True,
        )
    return PrivacySpec()


def main(kw: dict) -> None:
    rounds, server_lr = kw.pop("rounds", 20), kw.pop("server_lr", 1.0)
    frac, every = kw.pop("frac", 1.0), kw.pop("every", 5)
    dim, std = kw.pop("dim", 64), kw.pop("std", 0.1)
    refit, refit_lr = kw.pop("refit", 0), kw.pop("refit_lr", 0.05)
    decay, val = kw.pop("decay", None), kw.pop("val", False)
    server, tau = kw.pop("server", "avg"), kw.pop("tau", 1e-3)
    seed, dataset = kw.pop("seed", 0), kw.pop("dataset", "ml100k")
    if decay not in (None, "cosine", "cosine-server", "cosine-local"):
        raise ValueError(f"decay={decay!r}")
    privacy = privacy_of(kw, rounds)
    split = load_split(compose("simulate", [f"dataset={dataset}"]).dataset)
    if val:
        split = make_split(split.train, "leave_one_out", seed=0)
    source = SplitUserSource(split, np.arange(split.train.num_users))
    per_round = max(1, int(frac * len(source)))
    strategy = StrategySpec(
        name="fedadam" if server == "adam" else "fedavg",
        server_lr=server_lr,
        tau=tau,
        server_lr_schedule="cosine" if decay in ("cosine", "cosine-server") else "constant",
        local_lr_schedule="cosine" if decay in ("cosine", "cosine-local") else "constant",
    )
    user_level = None
    if privacy.user_level:
        user_level = plan_user_level(
            privacy, num_clients=len(source), clients_per_round=per_round, rounds=rounds
        )
    model = ModelSpec(dim, std)
    plan = FederationPlan(
        settings=RoundSettings(
            model=model,
            training=LocalTrainingSpec(**kw),
            privacy=privacy,
            evaluation=LocalEvalSpec(refit_epochs=refit, refit_lr=refit_lr),
            seed=seed,
        ),
        strategy=strategy,
        rounds=rounds,
        clients_per_round=per_round,
        eval_clients_per_round=len(source),
        seed=seed,
        eval_every_rounds=every,
        user_level=user_level,
    )
    start = time.time()

    def show(record) -> None:
        if record.evaluation:
            shown = {k: round(v, 4) for k, v in record.evaluation.items() if k in SHOWN}
            eps = record.user_level_epsilon or record.epsilon_max
            print(record.server_round, shown, "eps", round(eps, 2), f"{time.time() - start:.0f}s")

    initial = random_item_arrays(split.train.num_items, dim, init_std=std, seed=seed)
    run_rounds(InProcessTransport(source), plan, initial, on_round=show)


if __name__ == "__main__":
    main(eval(sys.argv[1]))  # a trusted dict literal from the command line
