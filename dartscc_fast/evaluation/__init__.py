"""What a search gives, and what it is measured against.

- :mod:`~dartscc_fast.evaluation.derive`: the architecture of any S (and kappa), and the table-only one;
- :mod:`~dartscc_fast.evaluation.evaluate`: inherited-weight accuracy, retraining from scratch, the DARTS and
  FBNet-style baseline searches and the random architectures of matched latency;
- :mod:`~dartscc_fast.evaluation.report`: profiles A, B, C, the family and the baselines side by side, the
  seeds' claim, the front, and the plots;
- :mod:`~dartscc_fast.evaluation.demo`: the whole method on the shipped data in minutes;
- :mod:`~dartscc_fast.evaluation.reproduce`: the demo over several seeds and tables, mean ± sd.
"""
