"""One worker process under `multiplex.supervisor`: `python -m multiplex.worker`.

The supervisor hands over the config (JSON), the shared QUIC secret and a pipe to say
"listening" on, all through the environment. The worker binds its TCP and UDP ports
with SO_REUSEPORT beside its siblings and logs with its pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from multiplex.config import Config
from multiplex.logs import configure_logging
from multiplex.settings import install_event_loop
from multiplex.supervisor import CONFIG_ENV, READY_ENV


def main() -> int:
    config = Config(**json.loads(os.environ.pop(CONFIG_ENV)))
    ready_fd = int(os.environ.pop(READY_ENV))
    install_event_loop(config)
    configure_logging(config)
    for handler in logging.getLogger("multiplex").handlers:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s [%(levelname)s] %(name)s [worker {os.getpid()}]: %(message)s"
            )
        )
    from multiplex.server import serve

    def ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    asyncio.run(serve(config, reuse_port=True, ready=ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
