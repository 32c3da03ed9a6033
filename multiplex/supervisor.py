"""`--workers N` and `--reload`: a supervisor process that runs the server in workers.

Each worker is `python -m multiplex.worker`, a whole server with its own event loop and
lifespan, configured by the supervisor through the environment. Workers share the ports:

- TCP binds: the supervisor makes one listening socket per worker slot, all with
  SO_REUSEPORT on the same address, so the kernel spreads connections across the
  slots; slot i's sockets are inherited by whichever worker fills slot i (`fd://N`).
  A reload's new worker for a slot accepts from the very socket its predecessor did,
  so the old worker's closing its copy loses nothing: had each worker its own
  SO_REUSEPORT socket, closing it would reset every connection still in its accept
  queue (Linux does not hand them to the siblings unless the net.ipv4.tcp_migrate_req
  sysctl says so), and a client sees "connection reset" for a request it may well
  have sent already. A slot whose worker dies unexpectedly keeps its sockets for the
  replacement, started at once; when the replacement must wait (workers dying at
  startup), the slot gets new sockets, so that meanwhile the kernel sends its
  connections to the other slots.
- QUIC binds: every worker binds the same UDP address with SO_REUSEPORT, and the
  kernel spreads each 4-tuple's datagrams (so a QUIC connection stays on one worker).
- A bind asking for port 0 gets a port picked here once, so that all workers agree on
  it. While it runs, the supervisor also keeps a bound, never-listening TCP socket on
  each port, so the port stays ours even while a slot's sockets are being renewed.
- unix sockets and inherited fds: bound once here and passed down (`fd://N`): every
  worker accepts from the one listening socket.

QUIC state that must agree across workers comes from one secret made here (see
`multiplex.protocols.quic_stateless`): the stateless reset key (a packet for a
connection another worker, or a worker's previous life, had is answered with a valid
reset) and the Retry token key (a token one worker issued is good at another).

Signals: SIGTERM/SIGINT stop every worker gracefully (each finishes in-flight work
within `graceful_timeout`, then is killed); SIGHUP starts a new generation of workers,
waits until they listen, then stops the old ones gracefully: no request is dropped.
A worker that dies unexpectedly is replaced, with a growing delay when workers keep
dying right after they start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from multiplex.config import Config
from multiplex.errors import StartupError
from multiplex.settings import parse_bind

logger = logging.getLogger("multiplex")

CONFIG_ENV = "MULTIPLEX_WORKER_CONFIG"
SECRET_ENV = "MULTIPLEX_SECRET_FD"
READY_ENV = "MULTIPLEX_READY_FD"
LIFELINE_ENV = "MULTIPLEX_LIFELINE_FD"
POLL = 0.2  # seconds between looks at the workers
RELOAD_POLL = 0.5  # seconds between looks at the files, with --reload
# Directories --reload never walks into: environments and caches hold thousands of
# files that are not the app's.
SKIP_DIRS = frozenset(
    {".venv", "venv", "env", "__pycache__", ".git", ".hg", "node_modules", "site-packages"}
)
# A worker that dies within this long of starting counts as a crash at startup.
EARLY_DEATH = 5.0
MAX_BACKOFF = 30.0


class Worker:
    def __init__(self, process: subprocess.Popen[bytes], ready_fd: int, slot: int) -> None:
        self.process = process
        self.slot = slot  # which of the supervisor's listening sockets it accepts from
        self.ready_fd = ready_fd  # read end of the pipe the worker writes to once listening
        self.started = time.monotonic()
        self.ready = False
        self.retiring = False  # asked to stop: its exit is expected
        self.deadline = 0.0  # once retiring: killed if still alive then

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = 1 if config.reload else config.workers
        self.workers: list[Worker] = []
        # Old generations finishing their in-flight requests after a reload: watched
        # from the main loop, so the supervisor stays responsive while they drain.
        self.retiring: list[Worker] = []
        self.secret = os.urandom(32)  # QUIC keys every worker shares; never logged
        self.held: list[socket.socket] = []  # port reservations and inherited sockets
        self.pass_fds: list[int] = []
        # TCP binds by their place in config.bind: the concrete (host, port).
        self.tcp_binds: dict[int, tuple[str, int]] = {}
        self.worker_config = self._resolve(config)
        # Per worker slot, per TCP bind: the listening sockets that slot's workers
        # inherit, one generation after the other (None: to be made at the next spawn).
        self.slots: list[dict[int, list[socket.socket]] | None] = [
            self._checked_slot_sockets() for _ in range(self.count)
        ]
        self.stopping = False
        self.reloading = False
        self.failures = 0  # workers that died early in a row
        self.next_spawn = 0.0
        self.mtimes: dict[Path, float] = {}
        self.next_scan = 0.0
        # Workers hold the read end; only this process holds the write end. If the
        # supervisor dies, even by SIGKILL, the kernel closes it and every worker sees
        # end-of-file and shuts down gracefully instead of serving on as an orphan.
        self.lifeline, self._lifeline_write = os.pipe()

    # --- ports -----------------------------------------------------------------------

    def _resolve(self, config: Config) -> Config:
        """The config workers run: concrete ports, unix sockets and fds inherited (TCP
        binds are replaced by each slot's sockets at spawn time)."""
        binds = [self._checked(bind, self._resolve_bind, config) for bind in config.bind]
        for index, bind in enumerate(binds):
            where = parse_bind(bind)
            if where.kind == "tcp":
                assert where.host is not None and where.port is not None
                self.tcp_binds[index] = (where.host, where.port)
        quic = [self._checked(bind, self._resolve_quic, config) for bind in config.quic_bind]
        return config.replace(bind=binds, quic_bind=quic, workers=1, reload=False)

    @staticmethod
    def _checked(bind: str, resolve: Callable[[Config, str], str], config: Config) -> str:
        try:
            return resolve(config, bind)
        except OSError as exc:
            # One line, as the single-process server says it, not a traceback.
            raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from None

    def _resolve_bind(self, config: Config, bind: str) -> str:
        where = parse_bind(bind)
        if where.kind == "tcp":
            assert where.host is not None and where.port is not None
            port = self._reserve(where.host, where.port, socket.SOCK_STREAM)
            host = f"[{where.host}]" if ":" in where.host else where.host
            return f"{host}:{port}"
        if where.kind == "unix":
            assert where.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(where.path):
                os.unlink(where.path)
            sock.bind(where.path)
            sock.listen(config.backlog)
            return self._inherit(sock)
        assert where.fd is not None
        self.pass_fds.append(where.fd)
        return bind

    def _resolve_quic(self, config: Config, bind: str) -> str:
        where = parse_bind(bind)
        assert where.host is not None and where.port is not None
        port = self._reserve(where.host, where.port, socket.SOCK_DGRAM)
        host = f"[{where.host}]" if ":" in where.host else where.host
        return f"{host}:{port}"

    def _reserve(self, host: str, port: int, kind: int) -> int:
        """The concrete port for `host:port` (port 0: one the kernel picks), checked
        free: the first bind is without SO_REUSEPORT, so a port another program
        listens on (even with SO_REUSEPORT, as the same user) is an error here rather
        than silently shared with it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # Only past connections' TIME_WAIT; for UDP it would allow duplicates.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            chosen: int = probe.getsockname()[1]
        if kind == socket.SOCK_STREAM:
            # A TCP socket that never listens takes no connections but keeps the port
            # ours between worker generations (and while every worker is down).
            sock = socket.socket(family, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, chosen))
            self.held.append(sock)
        # A bound UDP socket would receive its share of the port's datagrams, so none
        # is held: a port asked as 0 could in theory be taken before the workers bind
        # it (they would then fail to start, loudly); name a port to be sure.
        return chosen

    def _checked_slot_sockets(self) -> dict[int, list[socket.socket]]:
        """One slot's listening sockets, for every TCP bind."""
        made: dict[int, list[socket.socket]] = {}
        try:
            for index, (host, port) in self.tcp_binds.items():
                try:
                    made[index] = self._listening(host, port, self.config)
                except OSError as exc:
                    bind = self.config.bind[index]
                    raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from None
        except BaseException:
            self._close_slot(made)
            raise
        return made

    @staticmethod
    def _listening(host: str, port: int, config: Config) -> list[socket.socket]:
        """What loop.create_server would listen on for `host:port` (a name may give an
        IPv4 and an IPv6 address), with SO_REUSEPORT so that the slots share the port."""
        sockets: list[socket.socket] = []
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # As asyncio does: [::] is IPv6 only, 0.0.0.0 gets its own socket.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                # Listening from now on: connections wait in the queue while the
                # slot's first worker starts, rather than being refused.
                sock.listen(config.backlog)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    @staticmethod
    def _close_slot(sockets: dict[int, list[socket.socket]] | None) -> None:
        for group in (sockets or {}).values():
            for sock in group:
                sock.close()

    def _slot_config(self, slot: int) -> tuple[Config, list[int]]:
        """The config of a worker in `slot`, and the fds it inherits for it."""
        sockets = self.slots[slot]
        if sockets is None:
            sockets = self.slots[slot] = self._checked_slot_sockets()
        binds: list[str] = []
        fds: list[int] = []
        for index, bind in enumerate(self.worker_config.bind):
            if index not in sockets:
                binds.append(bind)
                continue
            for sock in sockets[index]:
                fds.append(sock.fileno())
                binds.append(f"fd://{sock.fileno()}")
        return self.worker_config.replace(bind=binds), fds

    def _inherit(self, sock: socket.socket) -> str:
        self.held.append(sock)
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        self.pass_fds.append(fd)
        return f"fd://{fd}"

    # --- workers ---------------------------------------------------------------------

    def _spawn(self, slot: int) -> Worker:
        config, slot_fds = self._slot_config(slot)
        read_fd, write_fd = os.pipe()
        # The secret goes through a pipe, not the environment: the app (and whatever
        # it starts) inherits the worker's environment. 32 bytes fit the pipe buffer.
        secret_read, secret_write = os.pipe()
        os.write(secret_write, self.secret)
        os.close(secret_write)
        env = dict(os.environ)
        env[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
        env[SECRET_ENV] = str(secret_read)
        env[READY_ENV] = str(write_fd)
        env[LIFELINE_ENV] = str(self.lifeline)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "multiplex.worker"],
                env=env,
                pass_fds=[*self.pass_fds, *slot_fds, write_fd, secret_read, self.lifeline],
            )
        finally:
            os.close(write_fd)
            os.close(secret_read)
        worker = Worker(process, read_fd, slot)
        logger.info("Started worker %d", worker.pid)
        return worker

    def _wait_ready(self, workers: list[Worker]) -> bool:
        """Until every worker in `workers` listens (True) or one of them exits."""
        deadline = time.monotonic() + self.config.lifespan_timeout + 30
        waiting = {w.ready_fd: w for w in workers if not w.ready}
        while waiting and time.monotonic() < deadline and not self.stopping:
            readable, _, _ = select.select(list(waiting), [], [], POLL)
            for fd in readable:
                worker = waiting.pop(fd)
                worker.ready = os.read(fd, 1) == b"1"
                if not worker.ready:
                    return False  # it exited before it could listen
            if any(w.process.poll() is not None for w in waiting.values()):
                return False
        return not waiting

    def _retire(self, workers: list[Worker]) -> None:
        """Ask workers to finish gracefully (SIGTERM); `_reap` kills what outlives the
        graceful timeout. The margin covers lifespan shutdown after the drain."""
        deadline = time.monotonic() + self.config.graceful_timeout + 5
        for worker in workers:
            if not worker.retiring:
                worker.retiring = True
                worker.deadline = deadline
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
                self.retiring.append(worker)

    def _reap(self) -> None:
        """Forget retired workers that have exited; kill those past their deadline."""
        now = time.monotonic()
        for worker in list(self.retiring):
            if worker.process.poll() is None:
                if now < worker.deadline:
                    continue
                logger.warning("Worker %d outlived the graceful timeout: killed", worker.pid)
                worker.process.kill()
                worker.process.wait()
            self.retiring.remove(worker)
            os.close(worker.ready_fd)

    def _stop(self) -> None:
        """Retire every worker and wait until all are gone."""
        # Our copies first: once the workers close theirs, the ports take no more
        # connections, as a single-process server's would on SIGTERM.
        for slot, sockets in enumerate(self.slots):
            self._close_slot(sockets)
            self.slots[slot] = None
        self._retire(self.workers)
        self.workers = []
        while self.retiring:
            self._reap()
            if self.retiring:
                time.sleep(0.05)

    def _failed_status(self) -> int:
        """The exit status of a worker that could not start (2: bad configuration, 1:
        could not start), as a single-process server would have exited."""
        workers = self.workers
        self._stop()
        statuses = [w.process.returncode for w in workers]
        return 2 if 2 in statuses else 1

    def _reload(self) -> None:
        """A new generation first, then the old one stops: no gap, nothing dropped."""
        logger.info("Reloading: starting %d new workers", self.count)
        # Each slot's new worker accepts from the sockets its predecessor did, so what
        # waits in their accept queues when the old one closes its copy is not lost.
        fresh: list[Worker] = []
        try:
            for slot in range(self.count):
                fresh.append(self._spawn(slot))
        except StartupError as exc:
            # A slot renewed after a crash could not listen again (the port is held,
            # so this should not happen): the old generation serves on.
            logger.error("Reload failed: %s; keeping the old workers", exc)
            self._retire(fresh)
            return
        if not self._wait_ready(fresh):
            if not self.stopping:
                logger.error("Reload failed: new workers did not start; keeping the old ones")
            self._retire(fresh)
            return
        old, self.workers = self.workers, fresh
        self._retire(old)
        logger.info(
            "Reloaded: workers %s; the old ones finish their requests",
            ", ".join(str(w.pid) for w in fresh),
        )

    def _replace_dead(self) -> None:
        if self.stopping:
            return  # they are exiting because they were told to (e.g. Ctrl-C)
        now = time.monotonic()
        for worker in list(self.workers):
            status = worker.process.poll()
            if status is None:
                continue
            self.workers.remove(worker)
            os.close(worker.ready_fd)
            early = now - worker.started < EARLY_DEATH
            self.failures = self.failures + 1 if early else 0
            delay = min(MAX_BACKOFF, 0.5 * 2 ** (self.failures - 1)) if early else 0.0
            if delay:
                # Its replacement waits: the slot's sockets go, so that meanwhile the
                # kernel sends its share of connections to the other slots rather than
                # queue them for seconds (what waits in the queue is reset, as the dead
                # worker's own socket would have been). Replaced at once, it keeps
                # them: the replacement answers what queued up while it started.
                self._close_slot(self.slots[worker.slot])
                self.slots[worker.slot] = None
            self.next_spawn = max(self.next_spawn, now + delay)
            logger.warning(
                "Worker %d exited with status %s; replacing it%s",
                worker.pid,
                status,
                f" in {delay:.1f} s (workers keep dying at startup)" if delay else "",
            )
        if len(self.workers) < self.count and now >= self.next_spawn:
            taken = {w.slot for w in self.workers}
            free = min(slot for slot in range(self.count) if slot not in taken)
            try:
                self.workers.append(self._spawn(free))
            except StartupError as exc:
                # The port is still ours (held), so this should not happen; try again
                # later rather than let the supervisor die with the other workers.
                logger.error("Cannot replace a worker: %s", exc)
                self.next_spawn = now + MAX_BACKOFF

    # --- --reload ----------------------------------------------------------------------

    def _watched(self) -> dict[Path, float]:
        found: dict[Path, float] = {}
        for root in [self.config.app_dir, *self.config.reload_dirs]:
            for directory, subdirs, files in os.walk(Path(root).resolve()):
                # Pruned, not filtered afterwards: a virtualenv under the app's
                # directory would otherwise be walked twice a second.
                subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.startswith(".")]
                for name in files:
                    if name.endswith(".py"):
                        path = Path(directory, name)
                        try:
                            found[path] = path.stat().st_mtime
                        except OSError:
                            pass  # removed while we looked
        return found

    def _changed(self) -> bool:
        now = time.monotonic()
        if now < self.next_scan:
            return False
        self.next_scan = now + RELOAD_POLL
        mtimes = self._watched()
        changed = [p for p, m in mtimes.items() if self.mtimes.get(p) != m]
        changed += [p for p in self.mtimes if p not in mtimes]
        self.mtimes = mtimes
        if changed:
            logger.info("Reloading: %s changed", changed[0])
        return bool(changed)

    # --- main loop -------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reloading = True
        else:
            self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.config.reload:
            self.mtimes = self._watched()
        logger.info(
            "Supervisor %d: %s",
            os.getpid(),
            "reloading on changes" if self.config.reload else f"{self.count} workers",
        )
        self.workers = [self._spawn(slot) for slot in range(self.count)]
        try:
            if not self._wait_ready(self.workers) and not self.stopping:
                logger.error("Workers failed to start")
                return self._failed_status()
            logger.info("Workers ready: %s", ", ".join(str(w.pid) for w in self.workers))
            while not self.stopping:
                time.sleep(POLL)
                if self.reloading or (self.config.reload and self._changed()):
                    self.reloading = False
                    self._reload()
                self._reap()
                self._replace_dead()
            logger.info("Stopping %d workers", len(self.workers) + len(self.retiring))
        finally:
            self._stop()
            for sock in self.held:
                sock.close()
            os.close(self._lifeline_write)
        return 0


def run_supervisor(config: Config) -> int:
    return Supervisor(config).run()
