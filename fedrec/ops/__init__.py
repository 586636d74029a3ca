"""Operator tools behind ``fedrec certs``, ``fedrec store`` and ``fedrec submit``: what a person
deploying fedrec on Flower's engine would otherwise write by hand."""
