"""A real server process for the SIGTERM drill: the platform's GrpcApplication plus the probe.

Run as `python -m tests.support.probe_server`; it logs JSON to stderr like `recsys serve`.
"""

from __future__ import annotations

import asyncio

from recsys.grpc_server.app import GrpcApplication
from recsys.observability.logging import configure_logging
from recsys.settings import load_settings
from tests.support.probe import probe_handler


def main() -> None:
    settings = load_settings(
        server={"port": 0, "shutdown_drain_seconds": 1.0, "shutdown_grace_seconds": 10.0},
        metrics={"port": 0},
    )
    configure_logging("INFO", "json")
    application = GrpcApplication(settings, [], generic_handlers=[probe_handler()])
    asyncio.run(application.run_until_signal())


if __name__ == "__main__":
    main()
