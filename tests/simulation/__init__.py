"""Seeded, replayable simulation of the money path (in the spirit of TigerBeetle's VOPR).

`harness.py` is the engine; `test_simulation.py` runs it in CI; `test_regressions.py` keeps
failing seeds; `bench/simulate.py` is the long mode.
"""
