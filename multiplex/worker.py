"""One worker process under `multiplex.supervisor`: `python -m multiplex.worker`.

Through the environment the supervisor hands over the config (JSON) and two pipes: one
to read the shared QUIC secret from (the secret itself stays out of the environment
the app inherits), one to say "listening" on. The worker binds its TCP and UDP ports
with SO_REUSEPORT beside its siblings and logs with its pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

from multiplex.config import Config
from multiplex.errors import ConfigError, StartupError
from multiplex.logs import configure_logging
from multiplex.protocols.quic_stateless import set_shared_secret
from multiplex.settings import install_event_loop
from multiplex.supervisor import CONFIG_ENV, LIFELINE_ENV, READY_ENV, SECRET_ENV


def main() -> int:
    config = Config(**json.loads(os.environ.pop(CONFIG_ENV)))
    ready_fd = int(os.environ.pop(READY_ENV))
    secret_fd = int(os.environ.pop(SECRET_ENV))
    with os.fdopen(secret_fd, "rb") as pipe:
        set_shared_secret(pipe.read())
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

    # SIGHUP is the supervisor's (reload); a terminal's hangup, sent to the whole
    # process group, must not kill the workers underneath it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lifeline = int(os.environ.pop(LIFELINE_ENV))

    async def run() -> None:
        def supervisor_gone() -> None:
            # Only the supervisor holds the pipe's write end: end-of-file means it
            # died. Shut down the way SIGTERM does, rather than serve on, unmanaged.
            asyncio.get_running_loop().remove_reader(lifeline)
            logging.getLogger("multiplex").warning("Supervisor gone: shutting down")
            os.kill(os.getpid(), signal.SIGTERM)

        asyncio.get_running_loop().add_reader(lifeline, supervisor_gone)
        await serve(config, reuse_port=True, ready=ready)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except StartupError as exc:
        return _fail(str(exc), 1)
    return 0


def _fail(message: str, status: int) -> int:
    """One line, as the CLI says it; the supervisor exits with the same status."""
    sys.stderr.write(f"multiplex [worker {os.getpid()}]: error: {' '.join(message.split())}\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
