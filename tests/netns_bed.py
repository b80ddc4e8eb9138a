"""A multi-host test bed on one Linux machine: one network namespace per Dask process.

The bed builds, in the root namespace, a bridge holding the first address of a private /24
(``10.213.47.0/24`` unless a live bed already uses it), and for each process — the scheduler,
each worker and, optionally, a client — a namespace of its own joined to the bridge by a veth
pair. Every address is one of the bed's own: nothing outside the machine is reached or routed.
``dask scheduler`` and ``dask worker`` run in their namespaces through ``ip netns exec``, each
in a working directory of its own (a worker's ``--local-directory`` inside it); the file system
is shared, as a cluster's network storage would be, so a store under the test's tmp path is
seen by all of them at the same absolute path, while a relative path means another place in
every process.

The kernel here has no ``netem`` qdisc, so latency and loss are injected in user space:
:class:`LatencyProxy` (asyncio, in this process, on the bridge's address in the root namespace)
forwards TCP connections, holding every chunk for a fixed delay in each direction; "loss" is a
chunk held back for an extra retransmission timeout (what a lost segment costs a TCP stream:
the bytes still arrive, in order, late) and connections can be reset (RST) on demand, all
of a listener's or those from one address. A proxied bed
points the workers and the client at the proxy for the scheduler and has each worker advertise
a proxy address (``--contact-address``), so that every connection between Dask processes —
worker to scheduler, worker to worker, client to scheduler — crosses it. Bandwidth is limited
with ``tc ... tbf`` on both ends of a veth pair. A link is cut by setting the root end of its
veth pair down: the namespace keeps its address and routes, its packets are silently dropped,
as when a cable is pulled.

Names carry a random suffix and the owner's pid (namespaces: ``bignmf-bed-<pid>-<suffix>-<role>``;
links: ``bnmf<suffix>…``, with the alias ``bignmf-netns-bed pid=<pid>``), so that beds of
parallel runs do not collide, and the leftovers of a run that died (its pid gone) are removed
before a bed is built. :meth:`NetnsBed.close` stops every process and removes every namespace,
veth and bridge of the bed, also when building it failed half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import LocalProcessCluster, _dask_cli

NS_PREFIX = "bignmf-bed-"
LINK_PREFIX = "bnmf"  # + 6 hex digits + a role of at most 5 characters: within IFNAMSIZ (15)
ALIAS = "bignmf-netns-bed pid="
SUBNETS = [ipaddress.ip_network(f"10.213.{third}.0/24") for third in range(47, 63)]
SCHEDULER_PORT = 8786  # fixed ports are safe: each process has a network namespace of its own
WORKER_PORT = 9000


class BedUnavailable(RuntimeError):
    """This machine cannot build the bed (the reason is the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _ip_json(*args: str) -> list:
    out = _ip("-j", *args).stdout.strip()
    return json.loads(out) if out else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unavailable() -> str | None:
    """Why this machine cannot build the bed, or None when it can (checked by doing it)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{LINK_PREFIX}{secrets.token_hex(3)}"
    ns = f"{NS_PREFIX}{os.getpid()}-probe-{probe}"
    steps = [
        ("netns add", ["netns", "add", ns]),
        ("netns exec", ["netns", "exec", ns, "true"]),
        ("bridge", ["link", "add", f"{probe}br", "type", "bridge"]),
        ("veth", ["link", "add", f"{probe}v", "type", "veth", "peer", "name", f"{probe}p"]),
        ("veth into a namespace", ["link", "set", f"{probe}p", "netns", ns]),
        ("bridge port", ["link", "set", f"{probe}v", "master", f"{probe}br"]),
        ("link up", ["link", "set", f"{probe}v", "up"]),
        ("link down", ["link", "set", f"{probe}v", "down"]),
    ]
    try:
        for what, args in steps:
            done = _ip(*args, check=False)
            if done.returncode != 0:
                return f"{what} refused: ip {' '.join(args)}: {done.stderr.strip()}"
    finally:
        _ip("link", "del", f"{probe}v", check=False)
        _ip("link", "del", f"{probe}br", check=False)
        _ip("netns", "del", ns, check=False)
    return None


def tbf_unavailable() -> str | None:
    """Why ``tc ... tbf`` cannot limit a veth's rate here, or None (checked by doing it)."""
    if shutil.which("tc") is None:
        return "no `tc` command (iproute2)"
    probe = f"{LINK_PREFIX}{secrets.token_hex(3)}v"
    _ip("link", "add", probe, "type", "veth", "peer", "name", probe[:-1] + "p")
    try:
        done = subprocess.run(
            ["tc", "qdisc", "add", "dev", probe, "root", "tbf", "rate", "10mbit", "burst",
             "32kbit", "latency", "50ms"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return None if done.returncode == 0 else f"tc tbf refused: {done.stderr.strip()}"
    finally:
        _ip("link", "del", probe, check=False)


def remove_leftovers() -> list[str]:
    """Remove the namespaces and links of beds whose owner process is gone; return their names.

    Beds of live processes (parallel runs) are left alone.
    """
    removed = []
    for entry in _ip_json("netns", "list"):
        name = entry["name"]
        if not name.startswith(NS_PREFIX):
            continue
        owner = name[len(NS_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        _kill_namespace(name)
        removed.append(name)
    for link in _ip_json("link", "show"):
        alias = link.get("ifalias", "")
        if not (link["ifname"].startswith(LINK_PREFIX) and alias.startswith(ALIAS)):
            continue
        owner = alias[len(ALIAS) :]
        if owner.isdigit() and _alive(int(owner)):
            continue
        _ip("link", "del", link["ifname"], check=False)
        removed.append(link["ifname"])
    return removed


def _kill_namespace(name: str) -> None:
    """Kill every process left in namespace ``name``, then remove it."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first of :data:`SUBNETS` that no address or route of the root namespace touches."""
    used = []
    for link in _ip_json("addr", "show"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                used.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network)
    for route in _ip_json("route", "show"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for net in SUBNETS:
        if not any(net.overlaps(other) for other in used):
            return net
    raise BedUnavailable(f"every subnet of {SUBNETS[0]}…{SUBNETS[-1]} is in use here")


class LatencyProxy:
    """A TCP proxy delaying every chunk by ``delay`` seconds in each direction.

    It runs an asyncio loop in a thread of this process. :meth:`forward` opens a listening port
    on ``host`` that relays to a target. A chunk read on one side is written on the other
    ``delay`` seconds later, keeping the order (the stream is pipelined: latency, not a rate
    limit). With probability ``loss`` a chunk is held for ``loss_penalty`` seconds more, as a
    TCP segment that had to be retransmitted (later chunks wait behind it, as in TCP).
    :meth:`reset` aborts live connections with a RST. The random draws are seeded.
    """

    CHUNK = 64 * 1024

    def __init__(self, host: str, delay: float = 0.0, loss: float = 0.0,
                 loss_penalty: float = 0.2, seed: int = 0):  # fmt: skip
        self.host = host
        self.delay = delay
        self.loss = loss
        self.loss_penalty = loss_penalty
        self.rng = random.Random(seed)
        self.stats = {"connections": 0, "chunks": 0, "bytes": 0, "lost": 0, "reset": 0}
        self._conns: dict[str, set] = {}
        self._servers: list = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="latency-proxy")  # fmt: skip
        self._thread.start()

    def _call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def forward(self, name: str, target: tuple[str, int]) -> int:
        """Listen on ``host`` (a free port) and relay to ``target``; return the port."""

        async def serve():
            server = await asyncio.start_server(
                lambda r, w: self._relay(name, target, r, w), self.host, 0
            )
            self._servers.append(server)
            return server.sockets[0].getsockname()[1]

        self._conns[name] = set()
        return self._call(serve())

    def reset(self, name: str | None = None, peer: str | None = None) -> int:
        """Abort (RST) the live connections relayed for ``name`` (all: None), only those from
        the address ``peer`` if given; return how many."""

        async def abort():
            names = list(self._conns) if name is None else [name]
            pairs = [pair for n in names for pair in list(self._conns[n])]
            if peer is not None:
                pairs = [p for p in pairs if p[0].get_extra_info("peername")[0] == peer]
            for pair in pairs:
                for writer in pair:
                    _abort(writer)
            self.stats["reset"] += len(pairs)
            return len(pairs)

        return self._call(abort())

    async def _relay(self, name, target, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._conns[name].add(pair)
        self.stats["connections"] += 1
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns[name].discard(pair)
            for w in pair:
                _abort(w)

    async def _pump(self, reader, writer):
        """Copy ``reader`` to ``writer``, each chunk ``delay`` (+ a drawn loss) later."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        loop = asyncio.get_running_loop()

        async def read():
            last = 0.0
            try:
                while data := await reader.read(self.CHUNK):
                    due = loop.time() + self.delay
                    if self.loss and self.rng.random() < self.loss:
                        due += self.loss_penalty
                        self.stats["lost"] += 1
                    last = max(due, last)  # in order: a late chunk holds back the next ones
                    self.stats["chunks"] += 1
                    self.stats["bytes"] += len(data)
                    await queue.put((last, data))
            finally:
                await queue.put((last, None))

        async def write():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(read(), write())

    def close(self) -> None:
        """Close the listeners and every connection, stop the loop."""

        async def shut():
            for server in self._servers:
                server.close()
            for pairs in self._conns.values():
                for pair in list(pairs):
                    for writer in pair:
                        _abort(writer)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(shut(), timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def _abort(writer) -> None:
    """Close ``writer``'s socket with a RST (no lingering FIN handshake)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class NetnsBed(LocalProcessCluster):
    """Scheduler and workers (and optionally a client) in network namespaces of their own.

    ``root``: the bed's directory (logs, the scheduler file, each process's working directory),
    on the file system every process shares. ``proxy``: a :class:`LatencyProxy` through which
    every Dask connection goes (None: direct connections over the bridge). ``env``: extra
    environment of the Dask processes (e.g. ``DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL``).
    ``nanny``: start the workers under a nanny (``dask worker``'s default) or without one.
    A context manager; :meth:`close` always tears everything down.

    ``address`` is where a client in the root namespace connects (the proxy's port when
    proxied); :meth:`run` runs a command in one of the namespaces.
    """

    def __init__(self, root: Path, workers: tuple[str, ...] = ("worker1", "worker2"),
                 client: bool = False, proxy: bool = False, delay: float = 0.0,
                 loss: float = 0.0, env: dict | None = None, nthreads: int = 1,
                 nanny: bool = True):  # fmt: skip
        reason = unavailable()
        if reason is not None:
            raise BedUnavailable(reason)
        self.workdir = Path(root).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.named: dict[str, subprocess.Popen] = {}
        self.scheduler_file = self.workdir / "scheduler.json"
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
        self.nthreads = nthreads
        self.nanny = nanny
        self.suffix = secrets.token_hex(3)
        self.namespaces: dict[str, str] = {}  # role -> namespace
        self.host_links: dict[str, str] = {}  # role -> root end of its veth pair
        self.peer_links: dict[str, str] = {}  # role -> namespace end
        self.ips: dict[str, str] = {}
        self.bridge = f"{LINK_PREFIX}{self.suffix}br"
        self.proxy: LatencyProxy | None = None
        self.leftovers = remove_leftovers()
        try:
            self._build(["scheduler", *workers, *(["client"] if client else [])])
            if proxy:
                self.proxy = LatencyProxy(self.ips["bridge"], delay=delay, loss=loss)
            self._start_scheduler()
            for name in workers:
                self.start_worker(name)
            self._wait_for_workers(len(workers))
        except BaseException:
            self.close()
            raise

    # --- the network ------------------------------------------------------------------------

    def _build(self, roles: list[str]) -> None:
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        prefix = self.subnet.prefixlen
        self.ips["bridge"] = str(hosts[0])
        _ip("link", "add", self.bridge, "type", "bridge")
        self._mark(self.bridge)
        _ip("addr", "add", f"{hosts[0]}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, role in enumerate(roles):
            ns = f"{NS_PREFIX}{os.getpid()}-{self.suffix}-{role}"
            host, peer = f"{LINK_PREFIX}{self.suffix}h{i}", f"{LINK_PREFIX}{self.suffix}p{i}"
            _ip("netns", "add", ns)
            self.namespaces[role] = ns
            _ip("link", "add", host, "type", "veth", "peer", "name", peer)
            self.host_links[role], self.peer_links[role] = host, peer
            self._mark(host)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", host, "master", self.bridge)
            _ip("link", "set", host, "up")
            self.ips[role] = str(hosts[9 + i])  # .10, .11, ...
            _ip("-n", ns, "addr", "add", f"{self.ips[role]}/{prefix}", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def _mark(link: str) -> None:
        _ip("link", "set", "dev", link, "alias", f"{ALIAS}{os.getpid()}")

    def link_down(self, role: str) -> None:
        """Cut ``role``'s link: its packets are dropped, its sockets see nothing (no RST)."""
        _ip("link", "set", self.host_links[role], "down")

    def link_up(self, role: str) -> None:
        """Restore ``role``'s link."""
        _ip("link", "set", self.host_links[role], "up")

    def limit_rate(self, role: str, rate: str = "100mbit", burst: str = "256kbit") -> None:
        """Limit ``role``'s link to ``rate`` each way with ``tc ... tbf`` on both veth ends."""
        spec = ["root", "tbf", "rate", rate, "burst", burst, "latency", "400ms"]
        for cmd in (
            ["tc", "qdisc", "replace", "dev", self.host_links[role], *spec],
            ["ip", "netns", "exec", self.namespaces[role], "tc", "qdisc", "replace", "dev",
             self.peer_links[role], *spec],
        ):  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    # --- the processes ----------------------------------------------------------------------

    def run(self, role: str, cmd: list, cwd: Path, timeout: float = 300, **kwargs):
        """``subprocess.run`` of ``cmd`` in ``role``'s namespace, in ``cwd``; output captured."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespaces[role], *map(str, cmd)], cwd=cwd,
            env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs,
        )  # fmt: skip

    def _start_in(self, role: str, cmd: list[str]) -> subprocess.Popen:
        cwd = self.workdir / role
        cwd.mkdir(exist_ok=True)
        log = open(self.workdir / f"{role}.log", "ab")  # noqa: SIM115 - closed in close()
        self.logs.append(log)
        # `ip netns exec` execs the command: the pid, and its process group, are dask's
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[role], *cmd], cwd=cwd, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        self.named[role] = proc
        return proc

    def _start_scheduler(self) -> None:
        ip = self.ips["scheduler"]
        self._start_in("scheduler", [*_dask_cli(), "scheduler", "--host", ip, "--port",
                       str(SCHEDULER_PORT), "--dashboard-address", "127.0.0.1:0",
                       "--scheduler-file", str(self.scheduler_file)])  # fmt: skip
        self.scheduler_address = self._wait_for_address()
        if self.proxy is None:
            self.address = self.scheduler_address
        else:
            port = self.proxy.forward("scheduler", (ip, SCHEDULER_PORT))
            self.address = f"tcp://{self.ips['bridge']}:{port}"

    def start_worker(self, name: str, nthreads: int | None = None, env=None):
        """Start ``dask worker`` ``name`` in its namespace (again, after it was stopped)."""
        ip = self.ips[name]
        contact = []
        if self.proxy is not None:
            port = self.proxy.forward(name, (ip, WORKER_PORT))
            contact = ["--contact-address", f"tcp://{self.ips['bridge']}:{port}"]
        cmd = [*_dask_cli(), "worker", self.address, "--listen-address",
               f"tcp://{ip}:{WORKER_PORT}", *contact, "--nthreads",
               str(nthreads or self.nthreads), "--nworkers", "1", "--dashboard-address",
               "127.0.0.1:0", "--memory-limit", "2GiB", "--local-directory",
               str(self.workdir / name / "local"), "--name", name,
               "--nanny" if self.nanny else "--no-nanny"]  # fmt: skip
        return self._start_in(name, cmd)

    def log(self, role: str) -> str:
        """What ``role``'s process wrote so far."""
        path = self.workdir / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, the proxy, and remove every namespace, veth and the bridge."""
        try:
            self._stop(grace=10)
        finally:
            if self.proxy is not None:
                self.proxy.close()
            for ns in self.namespaces.values():
                _kill_namespace(ns)  # what SIGTERM left, then the namespace (and its veth)
            for link in [*self.host_links.values(), self.bridge]:
                if _ip("link", "show", link, check=False).returncode == 0:
                    _ip("link", "del", link, check=False)

    def _stop(self, grace: float) -> None:
        """LocalProcessCluster.close with a shorter grace: a worker whose peer vanished can hang
        in distributed's close after SIGTERM (seen once in 7 runs, 20 s until SIGKILL)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()

    def remaining(self) -> list[str]:
        """The bed's namespaces and links that still exist (empty after :meth:`close`)."""
        names = {entry["name"] for entry in _ip_json("netns", "list")}
        links = {link["ifname"] for link in _ip_json("link", "show")}
        mine = [*self.namespaces.values(), *self.host_links.values(), self.bridge]
        return [name for name in mine if name in names or name in links]

    def __enter__(self) -> NetnsBed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
