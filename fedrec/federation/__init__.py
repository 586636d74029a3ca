"""The federation core, Flower-free: who takes part (``sampling``), what the server does with a
round's replies (``rule``: validate, classify, combine, step), what a round was (``record``), and
the one round loop (``loop.run_rounds``) every runner drives through a transport (Flower's,
SecAgg+'s, or ``in_process``)."""
