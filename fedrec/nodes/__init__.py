"""Nodes that play devices, Flower-free: a block of a split's users (``block``; a per-user node is
a block of one), their data (``sources``), where their states are kept (``state_store``), and
users simulated in process for studies (``simulated``)."""
