"""Serve the simulator on a port with uvicorn (one worker: its state lives in one process)."""

import asyncio

import uvicorn

from app.simulator.app import create_simulator_app
from app.simulator.state import SimConfig


async def serve_simulator(config: SimConfig, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Run until cancelled or interrupted."""
    app = create_simulator_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, workers=1, log_level="warning", access_log=False,
        lifespan="off",
        # A hung "timeout" reply must not hold a shutdown hostage.
        timeout_graceful_shutdown=1,
    ))
    await server.serve()


def run_simulator(config: SimConfig, host: str = "127.0.0.1", port: int = 8081) -> None:
    asyncio.run(serve_simulator(config, host, port))
