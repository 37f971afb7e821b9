"""The experiment harness of aa_jax: sweeps of training runs and the tables, claims and
figures made from their committed results. Run its two programs from the repository root
as ``python -m experiments.sweep`` (train a sweep's runs) and ``python -m
experiments.aggregate`` (write or check its tables); both read sweep files through
:mod:`experiments.grid` and never import each other. The other files here
(``figures.py``, ``switch_rate.py``, the benchmarks) run as scripts."""
