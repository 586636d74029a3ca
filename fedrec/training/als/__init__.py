"""Federated implicit-feedback ALS: the closed-form solves, a user's bounded statistics, and the
device round (:mod:`fedrec.training.als.trainer`)."""
