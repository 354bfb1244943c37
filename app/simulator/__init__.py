"""A realistic stand-in for the upstream SMM panel (smmmix/SmartPanel, or the standard family).

Used by the tests, the demo and the benchmarks: see DESIGN.md, "The simulator".
"""

from app.simulator.app import create_simulator_app
from app.simulator.server import run_simulator, serve_simulator
from app.simulator.state import FAULT_KINDS, SimConfig

__all__ = ["FAULT_KINDS", "SimConfig", "create_simulator_app", "run_simulator", "serve_simulator"]
