"""Where the computation runs: threads, one process, an embedded LocalCluster or a scheduler.

:func:`scheduler_for` answers the command line's ``--scheduler``; :func:`connect` sets a
cluster up from a YAML file (``--cluster``), one kind of cluster per file::

    kind: slurm          # local, address, slurm, pbs, kubernetes or ssh
    jobs: 4
    cores: 16
    memory: 64GiB

Each kind is an entry of :data:`KINDS`: a frozen dataclass whose fields are the keys its YAML
may hold, and a function that starts the cluster. Launchers (dask-jobqueue, dask-kubernetes,
asyncssh) are imported only when their kind is started.

Schedulers bignmf starts serve their dashboard on 127.0.0.1 unless the file says otherwise
(:data:`DASHBOARD_ADDRESS`; reach it through an SSH tunnel), and a ``security:`` section turns
on TLS for every connection (:func:`make_security`, shared by every kind that takes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import logging
import os
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bignmf.errors import ClusterConfigError, MissingLauncherError

LOCAL_KINDS = ("threads", "sync")

# Large glibc malloc thresholds keep freed buffers in the worker's heap for the next block;
# measured 1.2-1.9x faster per iteration on this kind of machine than distributed's defaults.
WORKER_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}

DASHBOARD_ADDRESS = "127.0.0.1:8787"
"""Where the scheduler of a ``slurm``, ``pbs`` or ``ssh`` cluster serves its dashboard unless
``scheduler_options`` says otherwise: its host's loopback interface, out of reach of the other
machines of the network (``ssh -L 8787:127.0.0.1:8787 HOST`` forwards it). Only the HTTP server:
the scheduler's comm port stays where the workers reach it."""


# ---------------------------------------------------------------------------------------------
# Checking values. A check takes the YAML value and where it was read, and returns the value
# the options hold or raises _Invalid with what was expected.


class _Invalid(Exception):
    """Raised by a check: the value is not what the key takes (message: what it takes)."""


@dataclass(frozen=True)
class _Where:
    """Where a value was read: the file (or ``<dict>``), its folder, the key path."""

    source: str
    base: Path
    prefix: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


def _positive_int(value: Any, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("a positive integer")
    return value


def _optional_positive_int(value: Any, where: _Where) -> int | None:
    return None if value is None else _positive_int(value, where)


def _count(value: Any, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid("a non-negative integer")
    return value


def _seconds(value: Any, where: _Where) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _Invalid("a positive number of seconds (or null: no limit)")
    return float(value)


def _text(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string")
    return value


def _optional_text(value: Any, where: _Where) -> str | None:
    return None if value is None else _text(value, where)


def _texts(value: Any, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid("a list of strings")
    return tuple(value)


def _hosts(value: Any, where: _Where) -> tuple[str, ...]:
    hosts = _texts(value, where)
    if len(hosts) < 2:
        raise _Invalid("a list of at least two hosts (the scheduler's, then the workers')")
    return hosts


def _flag(value: Any, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _options_mapping(value: Any, where: _Where) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Invalid("a mapping of option names to values")
    return dict(value)


def _default_scheduler_options() -> dict:
    return {"dashboard_address": DASHBOARD_ADDRESS}


def _scheduler_options(value: Any, where: _Where) -> dict:
    """Options of a scheduler bignmf starts: the dashboard on loopback unless they say where."""
    return {**_default_scheduler_options(), **_options_mapping(value, where)}


def _env(value: Any, where: _Where) -> dict[str, str]:
    """bignmf's :data:`WORKER_ENV` updated with the given variables; ``null`` removes one."""
    scalar = str | int | float
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or (isinstance(v, scalar) and not isinstance(v, bool)))
        for k, v in value.items()
    ):
        raise _Invalid("a mapping of variable names to strings or numbers (null removes one)")
    env = {**WORKER_ENV, **{k: None if v is None else str(v) for k, v in value.items()}}
    return {k: v for k, v in env.items() if v is not None}


def _size(value: Any, where: _Where) -> str:
    from dask.utils import parse_bytes

    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parse_bytes(value)
            return value
    raise _Invalid("a size such as '64GiB' or '500MB'")


def _memory_limit(value: Any, where: _Where) -> str | int | float | None:
    from dask.utils import parse_bytes

    if value is None or value == "auto":
        return value
    if isinstance(value, float) and 0 < value <= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parse_bytes(value)
            return value
    raise _Invalid(
        "'auto', a size such as '4GiB', a fraction of the machine's memory in (0, 1], "
        "a number of bytes, or null (no limit)"
    )


def _walltime(value: Any, where: _Where) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _Invalid(
            "a string such as '04:00:00' (quote it: YAML reads 12:00:00 unquoted as a number "
            "of seconds)"
        )
    return _text(value, where)


def _path(value: Any, where: _Where) -> Path:
    """A path; ``~`` expanded, relative paths taken from the configuration file's folder."""
    path = Path(_text(value, where)).expanduser()
    return path if path.is_absolute() else where.base / path


def _section(cls: type) -> Callable[[Any, _Where], Any]:
    """A check for a nested mapping read into the dataclass ``cls``."""

    def check(value: Any, where: _Where) -> Any:
        return _read_options(cls, value, where)

    return check


def _sections(cls: type) -> Callable[[Any, _Where], Any]:
    """A check for a list of nested mappings, each read into the dataclass ``cls``."""

    def check(value: Any, where: _Where) -> tuple:
        if not isinstance(value, list):
            raise _Invalid("a list of mappings")
        name = where.prefix.rstrip(".")
        return tuple(
            _read_options(cls, item, _Where(where.source, where.base, f"{name}[{i}]."))
            for i, item in enumerate(value)
        )

    return check


def _absolute(value: Any, where: _Where) -> str:
    if not _text(value, where).startswith("/"):
        raise _Invalid("an absolute path")
    return value


def _check(check: Callable[[Any, _Where], Any]) -> dict:
    """Field metadata: the key's check (every field with one is a YAML key)."""
    return {"check": check}


def _default_env() -> dict[str, str]:
    return dict(WORKER_ENV)


# ---------------------------------------------------------------------------------------------
# The options of each kind: one frozen dataclass each, its fields the YAML keys.


@dataclass(frozen=True, kw_only=True)
class SecurityOptions:
    """The ``security:`` section: TLS for every connection, as distributed's ``Security``.

    One certificate and key (PEM files) serve every role, the scheduler, the workers and this
    client; each end of a connection checks the other's certificate against ``ca_file``, so
    only holders of a certificate that CA signed may connect.

    Attributes
    ----------
    ca_file : path
        Certificate authority that signed ``cert`` (and the certificates of the other ends).
    cert, key : path
        Certificate and private key of the scheduler, the workers and this client (of this
        client only, for ``kind: address``).
    require_encryption : bool
        Refuse unencrypted connections (default true).

    Notes
    -----
    ``~`` is expanded and a relative path is taken from the configuration file's folder. The
    files are checked (readable, loadable) when the cluster starts, by :func:`make_security`;
    workers started on other machines read them at the same paths.
    """

    ca_file: Path = field(metadata=_check(_path))
    cert: Path = field(metadata=_check(_path))
    key: Path = field(metadata=_check(_path))
    require_encryption: bool = field(default=True, metadata=_check(_flag))


TLSOptions = SecurityOptions
"""The former name of :class:`SecurityOptions`, from the ``tls:`` section of ``kind: address``."""


@dataclass(frozen=True, kw_only=True)
class LocalOptions:
    """``kind: local``: a LocalCluster of worker processes on this machine (127.0.0.1).

    Attributes
    ----------
    workers : int, optional
        Worker processes (default: one per core).
    threads : int
        Threads per worker (default 1).
    memory_limit : str, int, float or None
        Per worker: ``'auto'`` (default, the machine's memory shared evenly), a size such as
        ``'4GiB'``, a fraction, or ``null`` for no limit.
    env : dict
        Environment of the worker processes, set before they start: bignmf's
        :data:`WORKER_ENV` (malloc thresholds, single-threaded BLAS) updated with these
        variables; ``null`` removes one.
    dashboard_address : str
        Where the scheduler's HTTP server (and dashboard, with bokeh) listens: default
        ``127.0.0.1:0``, a free port on this machine (``client.dashboard_link`` tells which).
    security : SecurityOptions, optional
        TLS between the scheduler, the workers and this client (``tls://127.0.0.1`` addresses).
    """

    workers: int | None = field(default=None, metadata=_check(_optional_positive_int))
    threads: int = field(default=1, metadata=_check(_positive_int))
    memory_limit: str | int | float | None = field(default="auto", metadata=_check(_memory_limit))
    env: dict[str, str] = field(default_factory=_default_env, metadata=_check(_env))
    dashboard_address: str = field(default="127.0.0.1:0", metadata=_check(_text))
    security: SecurityOptions | None = field(
        default=None, metadata=_check(_section(SecurityOptions))
    )


@dataclass(frozen=True, kw_only=True)
class AddressOptions:
    """``kind: address``: a scheduler that is already running.

    Attributes
    ----------
    address : str
        The scheduler, e.g. ``tcp://10.0.0.5:8786`` or ``tls://10.0.0.5:8786``.
    scheduler_file : path
        Instead of ``address``: the JSON file ``dask scheduler --scheduler-file`` writes.
    security : SecurityOptions, optional
        Connect with TLS as the holder of ``cert`` (the address must start with ``tls://``).
    tls : SecurityOptions, optional
        The former name of ``security`` (give one or the other).
    timeout : float, optional
        Seconds to connect, then to wait for ``wait_for_workers`` (default 60; null: no
        limit).
    wait_for_workers : int
        Workers to wait for before the run is planned (default 1; 0: do not wait).
    """

    address: str | None = field(default=None, metadata=_check(_optional_text))
    scheduler_file: Path | None = field(default=None, metadata=_check(_path))
    security: SecurityOptions | None = field(
        default=None, metadata=_check(_section(SecurityOptions))
    )
    tls: SecurityOptions | None = field(default=None, metadata=_check(_section(SecurityOptions)))
    timeout: float | None = field(default=60.0, metadata=_check(_seconds))
    wait_for_workers: int = field(default=1, metadata=_check(_count))

    def __post_init__(self) -> None:
        if (self.address is None) == (self.scheduler_file is None):
            raise ValueError("give exactly one of 'address' and 'scheduler_file'")
        if self.tls is not None:
            if self.security is not None:
                raise ValueError("give 'security' or its former name 'tls', not both")
            object.__setattr__(self, "security", self.tls)
        if self.security is not None and not (self.address or "tls://").startswith("tls://"):
            raise ValueError(
                f"'address' must start with tls:// when '{self.security_key}' is set, "
                f"got {self.address!r}"
            )

    @property
    def security_key(self) -> str:
        """The key ``security`` was read from: ``'security'``, or ``'tls'`` (its former name)."""
        return "security" if self.tls is None else "tls"


class _SplitCores:
    """A job or pod of ``cores`` cores split into ``processes`` worker processes."""

    cores: int
    processes: int | None

    def __post_init__(self) -> None:
        if self.processes is not None and self.cores % self.processes:
            raise ValueError(f"'processes' ({self.processes}) must divide 'cores' ({self.cores})")

    @property
    def n_processes(self) -> int:
        """Worker processes per job or pod."""
        return self.processes or self.cores


@dataclass(frozen=True, kw_only=True)
class JobQueueOptions(_SplitCores):
    """Options shared by ``kind: slurm`` and ``kind: pbs`` (dask-jobqueue).

    Each job runs ``processes`` worker processes of ``cores / processes`` threads sharing
    ``memory``; the driver (where ``bignmf fit`` runs) hosts the scheduler and submits the jobs.

    Attributes
    ----------
    jobs : int
        Jobs to submit (default 1).
    cores : int
        Cores per job (required).
    memory : str
        Memory per job, e.g. ``'64GiB'`` (required).
    processes : int, optional
        Worker processes per job (default: ``cores``, one single-threaded worker per core).
    walltime : str, optional
        Job time limit, e.g. ``'04:00:00'`` (default: the queue's).
    queue : str, optional
        SLURM partition or PBS queue.
    account : str, optional
        Account charged for the jobs.
    job_extra_directives : list of str
        More ``#SBATCH`` / ``#PBS`` lines, e.g. ``['--exclusive']``.
    prologue : list of str
        Shell lines run before the workers start, e.g. ``module load`` or ``source
        venv/bin/activate``.
    env : dict
        Exported in the job script before the workers start: :data:`WORKER_ENV` updated
        with these variables; ``null`` removes one.
    interface : str, optional
        Network interface of the workers and scheduler, e.g. ``ib0``.
    local_directory : str, optional
        Workers' scratch folder, e.g. ``$TMPDIR``.
    scheduler_options : dict
        Passed to the scheduler, which runs here (the login or submit node), e.g.
        ``{port: 8786}``. ``dashboard_address`` defaults to :data:`DASHBOARD_ADDRESS`, this
        machine's loopback (``':8787'`` would serve it to the whole network); the comm port
        stays on ``interface``, where the workers reach it.
    security : SecurityOptions, optional
        TLS between the scheduler, the workers and this client (``tls://`` addresses). The
        workers read the same files on the compute nodes: keep them on a shared file system.
    wait_for_workers : int, optional
        Workers to wait for before the run is planned (default: all, ``jobs × processes``).
    timeout : float, optional
        Seconds to wait for them (default: as long as the queue takes).
    """

    cluster_class: ClassVar[str]

    jobs: int = field(default=1, metadata=_check(_positive_int))
    cores: int = field(metadata=_check(_positive_int))
    memory: str = field(metadata=_check(_size))
    processes: int | None = field(default=None, metadata=_check(_positive_int))
    walltime: str | None = field(default=None, metadata=_check(_walltime))
    queue: str | None = field(default=None, metadata=_check(_optional_text))
    account: str | None = field(default=None, metadata=_check(_optional_text))
    job_extra_directives: tuple[str, ...] = field(default=(), metadata=_check(_texts))
    prologue: tuple[str, ...] = field(default=(), metadata=_check(_texts))
    env: dict[str, str] = field(default_factory=_default_env, metadata=_check(_env))
    interface: str | None = field(default=None, metadata=_check(_optional_text))
    local_directory: str | None = field(default=None, metadata=_check(_optional_text))
    scheduler_options: dict = field(
        default_factory=_default_scheduler_options, metadata=_check(_scheduler_options)
    )
    security: SecurityOptions | None = field(
        default=None, metadata=_check(_section(SecurityOptions))
    )
    wait_for_workers: int | None = field(default=None, metadata=_check(_count))
    timeout: float | None = field(default=None, metadata=_check(_seconds))

    def cluster_kwargs(self, source: str = "<dict>") -> dict[str, Any]:
        """Keyword arguments of dask-jobqueue's cluster class.

        Parameters
        ----------
        source : str
            The configuration file, named by the errors of :func:`make_security`.

        Returns
        -------
        dict
            With ``security`` (a ``distributed.security.Security``) when the options have a
            ``security`` section; dask-jobqueue then uses ``tls://`` and gives the workers the
            same files (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``).
        """
        exports = [f"export {name}={shlex.quote(value)}" for name, value in self.env.items()]
        kwargs = {
            "cores": self.cores,
            "memory": self.memory,
            "processes": self.n_processes,
            "walltime": self.walltime,
            "queue": self.queue,
            "account": self.account,
            "job_extra_directives": list(self.job_extra_directives),
            "job_script_prologue": [*self.prologue, *exports],
            "interface": self.interface,
            "local_directory": self.local_directory,
            "scheduler_options": dict(self.scheduler_options),
            "security": make_security(self.security, source),
        }
        return {name: value for name, value in kwargs.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class SlurmOptions(JobQueueOptions):
    """``kind: slurm``: worker jobs submitted with ``sbatch`` (dask-jobqueue's SLURMCluster).

    The keys are those of :class:`JobQueueOptions`; ``queue`` is the partition.
    """

    cluster_class: ClassVar[str] = "SLURMCluster"


@dataclass(frozen=True, kw_only=True)
class PBSOptions(JobQueueOptions):
    """``kind: pbs``: worker jobs submitted with ``qsub`` (dask-jobqueue's PBSCluster).

    The keys are those of :class:`JobQueueOptions`, and:

    Attributes
    ----------
    resource_spec : str, optional
        The ``-l`` request, e.g. ``'select=1:ncpus=16:mem=64GB'`` (default: from ``cores``
        and ``memory``).
    """

    cluster_class: ClassVar[str] = "PBSCluster"

    resource_spec: str | None = field(default=None, metadata=_check(_optional_text))

    def cluster_kwargs(self, source: str = "<dict>") -> dict[str, Any]:
        """Keyword arguments of dask-jobqueue's PBSCluster (see ``JobQueueOptions``)."""
        kwargs = super().cluster_kwargs(source)
        if self.resource_spec is not None:
            kwargs["resource_spec"] = self.resource_spec
        return kwargs


@dataclass(frozen=True, kw_only=True)
class VolumeOptions:
    """An entry of ``volumes:`` in ``kind: kubernetes``: a claim mounted in every pod.

    Attributes
    ----------
    claim : str
        Name of a PersistentVolumeClaim (ReadWriteMany: all pods read the store and write W).
    mount_path : str
        Where it is mounted, the same path as in the pod running ``bignmf fit``.
    """

    claim: str = field(metadata=_check(_text))
    mount_path: str = field(metadata=_check(_absolute))


@dataclass(frozen=True, kw_only=True)
class KubernetesOptions(_SplitCores):
    """``kind: kubernetes``: a DaskCluster resource made by the dask-kubernetes operator.

    Attributes
    ----------
    image : str
        Container image of the scheduler and workers; bignmf must be installed in it
        (required).
    name : str
        Name of the DaskCluster resource (default ``bignmf``).
    namespace : str, optional
        Kubernetes namespace (default: the current context's).
    pods : int
        Worker pods (default 1).
    cores : int
        CPUs requested and limited per pod (default 1).
    memory : str, optional
        Memory requested and limited per pod, a Kubernetes quantity such as ``'8Gi'``.
    processes : int, optional
        Worker processes per pod (default: ``cores``, single-threaded).
    env : dict
        Environment of the pods: :data:`WORKER_ENV` updated with these; ``null`` removes one.
    volumes : list of VolumeOptions
        Claims mounted in the scheduler and worker pods: the store and the run directory must
        be at the same paths for the driver and every worker.
    wait_for_workers : int, optional
        Workers to wait for before the run is planned (default: all, ``pods × processes``).
    timeout : float, optional
        Seconds to wait for them (default: no limit).

    Notes
    -----
    No ``security`` section: the operator's ``KubeCluster`` reaches its scheduler at a
    ``tcp://`` address it builds itself and takes no ``security=``. Nor a dashboard setting: the
    operator retires workers through the scheduler's HTTP API on the scheduler's Service, so the
    dashboard stays on the pod's address, behind a ClusterIP Service (``kubectl port-forward``).
    """

    refused_keys: ClassVar[dict[str, str]] = {
        "security": "the dask-kubernetes operator connects to its scheduler over tcp:// only "
        "(its KubeCluster takes no security=); encrypt the pod network instead"
    }

    image: str = field(metadata=_check(_text))
    name: str = field(default="bignmf", metadata=_check(_text))
    namespace: str | None = field(default=None, metadata=_check(_optional_text))
    pods: int = field(default=1, metadata=_check(_positive_int))
    cores: int = field(default=1, metadata=_check(_positive_int))
    memory: str | None = field(default=None, metadata=_check(_optional_text))
    processes: int | None = field(default=None, metadata=_check(_positive_int))
    env: dict[str, str] = field(default_factory=_default_env, metadata=_check(_env))
    volumes: tuple[VolumeOptions, ...] = field(
        default=(), metadata=_check(_sections(VolumeOptions))
    )
    wait_for_workers: int | None = field(default=None, metadata=_check(_count))
    timeout: float | None = field(default=None, metadata=_check(_seconds))


@dataclass(frozen=True, kw_only=True)
class SSHOptions:
    """``kind: ssh``: a scheduler and workers started over SSH (distributed's SSHCluster).

    Attributes
    ----------
    hosts : list of str
        The scheduler's host, then one entry per worker host (a host may repeat).
    workers_per_host : int
        Worker processes on each worker host (default 1).
    threads : int
        Threads per worker (default 1).
    memory_limit : str, int, float or None
        Per worker, as for ``kind: local`` (default ``'auto'``).
    connect_options : dict
        Passed to ``asyncssh.connect``: ``port``, ``username``, ``client_keys``,
        ``known_hosts``...
    remote_python : str, optional
        Python on the hosts (default: this one's path).
    scheduler_options : dict
        Passed to the scheduler on the first host, e.g. ``{port: 8786}``.
        ``dashboard_address`` defaults to :data:`DASHBOARD_ADDRESS`, that host's loopback; the
        comm port stays where the workers reach it.
    security : SecurityOptions, optional
        TLS between the scheduler, the workers and this client (``tls://`` addresses); every
        host reads the same files at the same paths.
    worker_options : dict
        More keyword arguments of the workers' Nanny, e.g. ``{local_directory: /scratch}``.
    env : dict
        Environment of the worker processes, set before they start: :data:`WORKER_ENV`
        updated with these; ``null`` removes one.
    wait_for_workers : int, optional
        Workers to wait for before the run is planned (default: all,
        ``workers_per_host`` per worker host).
    timeout : float, optional
        Seconds to wait for them (default: no limit).
    """

    hosts: tuple[str, ...] = field(metadata=_check(_hosts))
    workers_per_host: int = field(default=1, metadata=_check(_positive_int))
    threads: int = field(default=1, metadata=_check(_positive_int))
    memory_limit: str | int | float | None = field(default="auto", metadata=_check(_memory_limit))
    connect_options: dict = field(default_factory=dict, metadata=_check(_options_mapping))
    remote_python: str | None = field(default=None, metadata=_check(_optional_text))
    scheduler_options: dict = field(
        default_factory=_default_scheduler_options, metadata=_check(_scheduler_options)
    )
    security: SecurityOptions | None = field(
        default=None, metadata=_check(_section(SecurityOptions))
    )
    worker_options: dict = field(default_factory=dict, metadata=_check(_options_mapping))
    env: dict[str, str] = field(default_factory=_default_env, metadata=_check(_env))
    wait_for_workers: int | None = field(default=None, metadata=_check(_count))
    timeout: float | None = field(default=None, metadata=_check(_seconds))


# ---------------------------------------------------------------------------------------------
# Reading a configuration.


@dataclass(frozen=True)
class ClusterConfig:
    """A checked cluster configuration.

    Attributes
    ----------
    kind : str
        A key of :data:`KINDS`.
    options : dataclass
        That kind's options (e.g. :class:`SlurmOptions`).
    source : str
        The file it was read from, or ``'<dict>'``.
    """

    kind: str
    options: Any
    source: str = "<dict>"


def _read_options(cls: type, data: Any, where: _Where, what: str | None = None) -> Any:
    """Check the mapping ``data`` key by key into the dataclass ``cls`` (``what`` it is)."""
    what = what or f"'{where.prefix.rstrip('.')}'"
    if not isinstance(data, dict):
        got = type(data).__name__
        raise ClusterConfigError(f"{where.source}: {what} must be a mapping of keys, got {got}")
    keys = [f for f in dataclasses.fields(cls) if "check" in f.metadata]
    names = [f.name for f in keys]
    valid = "valid keys: " + ", ".join(sorted(names if where.prefix else ["kind", *names]))
    refused = getattr(cls, "refused_keys", {})
    for name in data:
        if name in refused:
            raise ClusterConfigError(
                f"{where.source}: {what} takes no '{where.key(name)}': {refused[name]}"
            )
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ClusterConfigError(
                f"{where.source}: unknown key '{where.key(str(name))}'{hint} in {what}; {valid}"
            )
    values = {}
    for f in keys:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ClusterConfigError(
                    f"{where.source}: missing key '{where.key(f.name)}' in {what}; {valid}"
                )
            continue
        inner = _Where(where.source, where.base, f"{where.key(f.name)}.")
        try:
            values[f.name] = f.metadata["check"](data[f.name], inner)
        except _Invalid as err:
            value = data[f.name]
            raise ClusterConfigError(
                f"{where.source}: '{where.key(f.name)}' must be {err}, got {value!r} "
                f"({type(value).__name__})"
            ) from None
    try:
        return cls(**values)
    except ValueError as err:
        raise ClusterConfigError(f"{where.source}: {what}: {err}") from None


def load_config(config: str | os.PathLike | Mapping | ClusterConfig) -> ClusterConfig:
    """Read and check a cluster configuration.

    Parameters
    ----------
    config : path, mapping or ClusterConfig
        A YAML file (read with ``yaml.safe_load``) or the same content as a mapping, with a
        ``kind`` key naming one of :data:`KINDS` and that kind's keys.

    Returns
    -------
    ClusterConfig

    Raises
    ------
    ClusterConfigError
        Naming the file and the key: unknown kind or key (with the valid ones), missing or
        ill-typed value, not YAML.
    FileNotFoundError
        The file does not exist.

    Notes
    -----
    Relative paths in a file (``scheduler_file``, ``security``) are taken from the file's
    folder. The files of ``security`` are checked when the cluster starts
    (:func:`make_security`), so that a file naming them can be read anywhere.
    """
    if isinstance(config, ClusterConfig):
        return config
    if isinstance(config, Mapping):
        data, where = dict(config), _Where("<dict>", Path.cwd())
    else:
        import yaml

        path = Path(config)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ClusterConfigError(f"{path}: not valid YAML: {err}") from None
        where = _Where(str(path), path.resolve().parent)
    valid = "valid kinds: " + ", ".join(sorted(KINDS))
    if not isinstance(data, dict):
        raise ClusterConfigError(
            f"{where.source}: expected a mapping with a 'kind' key "
            f"({valid}), got {type(data).__name__}"
        )
    if "kind" not in data:
        raise ClusterConfigError(f"{where.source}: missing key 'kind'; {valid}")
    kind = data.pop("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1) if isinstance(kind, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ClusterConfigError(f"{where.source}: unknown kind {kind!r}{hint}; {valid}")
    options = _read_options(KINDS[kind].options, data, where, f"kind '{kind}'")
    return ClusterConfig(kind, options, where.source)


# ---------------------------------------------------------------------------------------------
# Starting each kind.


def _launcher(kind: str) -> Any:
    """Import the module that launches ``kind``, or say which extra installs it."""
    spec = KINDS[kind]
    if spec.module is None:
        return None
    try:
        return importlib.import_module(spec.module)
    except ImportError as err:
        raise MissingLauncherError(
            f"cluster kind '{kind}' needs {spec.package}, which could not be imported ({err}); "
            f"install it with: pip install 'bignmf-dask[{spec.extra}]'"
        ) from err


def _wait(client: Any, n: int, timeout: float | None) -> None:
    if n:
        client.wait_for_workers(n, timeout=timeout)


def _readable(path: Path, key: str, source: str) -> str:
    """``path`` as a string once it opens for reading; else a one-line error naming ``key``."""
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterConfigError(
            f"{source}: '{key}' must be a readable file, got '{path}' ({reason})"
        ) from None
    return str(path)


def _check_loads(security: Any, key: str, source: str) -> None:
    """Load the CA, certificate and key once: a bad file fails here, not when connecting."""
    import ssl

    try:
        security.get_connection_args("client")
    except ssl.SSLError as err:
        raise ClusterConfigError(
            f"{source}: '{key}': ca_file, cert and key must be PEM files of a certificate "
            f"authority, a certificate and its private key ({err})"
        ) from None


def make_security(
    section: SecurityOptions | None, source: str = "<dict>", key: str = "security"
) -> Any:
    """The ``distributed.security.Security`` of a ``security`` section, its files checked.

    Every kind that takes TLS builds its ``Security`` here.

    Parameters
    ----------
    section : SecurityOptions or None
        The section (``options.security``).
    source : str
        The configuration file, named by the errors.
    key : str
        The section's key, named by the errors (``'tls'`` in a file using the former name).

    Returns
    -------
    Security or None
        The CA, one certificate and key for every role (scheduler, worker, client) and
        ``require_encryption``; ``None`` without a section.

    Raises
    ------
    ClusterConfigError
        A file does not exist or cannot be read (naming the key and the file), or the files
        do not load as a CA, a certificate and its key.
    """
    if section is None:
        return None
    from distributed.security import Security

    ca_file, cert, private_key = (
        _readable(getattr(section, name), f"{key}.{name}", source)
        for name in ("ca_file", "cert", "key")
    )
    roles = {
        f"tls_{role}_{part}": path
        for role in ("client", "scheduler", "worker")
        for part, path in (("cert", cert), ("key", private_key))
    }
    security = Security(tls_ca_file=ca_file, require_encryption=section.require_encryption, **roles)
    _check_loads(security, key, source)
    return security


def _security_config(security: Any) -> dict[str, Any]:
    """Dask configuration giving ``security`` to processes that inherit it (``kind: ssh``)."""
    if security is None:
        return {}
    config = {
        "distributed.comm.require-encryption": security.require_encryption,
        "distributed.comm.tls.ca-file": security.tls_ca_file,
    }
    for role in ("client", "scheduler", "worker"):
        tls = security.get_tls_config_for_role(role)
        config[f"distributed.comm.tls.{role}.cert"] = tls["cert"]
        config[f"distributed.comm.tls.{role}.key"] = tls["key"]
    return config


@contextlib.contextmanager
def _start_local(config: ClusterConfig) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    options = config.options
    security = make_security(options.security, config.source)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": options.env}):
        cluster = LocalCluster(
            n_workers=options.workers or os.cpu_count() or 1,
            threads_per_worker=options.threads,
            processes=True,
            host="127.0.0.1",
            protocol=None if security is None else "tls://",
            security=security,
            dashboard_address=options.dashboard_address,
            memory_limit=options.memory_limit,
        )
    with cluster, Client(cluster) as client:
        _wait(client, len(cluster.workers), 60)
        yield client


@contextlib.contextmanager
def _start_address(config: ClusterConfig) -> Iterator[Any]:
    from distributed import Client

    options = config.options
    security = make_security(options.security, config.source, options.security_key)
    scheduler_file = None if options.scheduler_file is None else str(options.scheduler_file)
    client = Client(
        options.address, scheduler_file=scheduler_file, security=security, timeout=options.timeout
    )
    try:
        _wait(client, options.wait_for_workers, options.timeout)
        yield client
    finally:
        with _reconnect_quietly():
            client.close()


class _CancelledReconnect(logging.Filter):
    """Drops distributed's log of its own reconnect attempt cancelled by ``Client.close``."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, asyncio.CancelledError)


@contextlib.contextmanager
def _reconnect_quietly() -> Iterator[None]:
    """Close a client whose scheduler is gone without a traceback on stderr: the client is
    still trying to reconnect, closing it cancels that, and distributed logs the cancellation
    with its traceback (the fit has already said, in one line, that the scheduler was lost)."""
    quiet = _CancelledReconnect()
    logger = logging.getLogger("distributed.client")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _jobqueue_cluster(config: ClusterConfig) -> Any:
    """The dask-jobqueue cluster of a slurm or pbs configuration, with no job submitted."""
    kwargs = config.options.cluster_kwargs(config.source)  # the security files checked first
    jobqueue = _launcher(config.kind)
    return getattr(jobqueue, config.options.cluster_class)(**kwargs)


@contextlib.contextmanager
def _start_jobqueue(config: ClusterConfig) -> Iterator[Any]:
    from distributed import Client

    options = config.options
    with _jobqueue_cluster(config) as cluster, Client(cluster) as client:
        cluster.scale(jobs=options.jobs)
        expected = options.jobs * options.n_processes
        _wait(client, _or(options.wait_for_workers, expected), options.timeout)
        yield client


@contextlib.contextmanager
def _start_kubernetes(config: ClusterConfig) -> Iterator[Any]:
    from distributed import Client

    operator = _launcher(config.kind)
    options = config.options
    spec = kubernetes_spec(config)
    cluster = operator.KubeCluster(custom_cluster_spec=spec, namespace=options.namespace)
    with cluster, Client(cluster) as client:
        expected = options.pods * options.n_processes
        _wait(client, _or(options.wait_for_workers, expected), options.timeout)
        yield client


@contextlib.contextmanager
def _start_ssh(config: ClusterConfig) -> Iterator[Any]:
    import dask
    from distributed import Client, SSHCluster

    options = config.options
    security = make_security(options.security, config.source)
    _launcher(config.kind)
    worker_options = {
        **options.worker_options,
        "n_workers": options.workers_per_host,
        "nthreads": options.threads,
        "memory_limit": options.memory_limit,
    }
    scheduler_options = dict(options.scheduler_options)
    if security is not None:
        # The workers (and their nannies) take the protocol from the scheduler's address.
        scheduler_options.setdefault("protocol", "tls")
    # The remote processes inherit this process's Dask configuration: the workers'
    # environment, and the TLS files (a Security object does not travel in their options).
    inherited = {"distributed.nanny.pre-spawn-environ": options.env, **_security_config(security)}
    with dask.config.set(inherited):
        cluster = SSHCluster(
            hosts=list(options.hosts),
            connect_options=dict(options.connect_options),
            worker_options=worker_options,
            scheduler_options=scheduler_options,
            remote_python=options.remote_python,
            security=security,
        )
    with cluster, Client(cluster) as client:
        # A worker reports that it started before the scheduler has registered it.
        expected = (len(options.hosts) - 1) * options.workers_per_host
        _wait(client, _or(options.wait_for_workers, expected), options.timeout)
        yield client


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass(frozen=True)
class Kind:
    """One kind of cluster: its options, how it starts, and what must be installed.

    Attributes
    ----------
    options : type
        Frozen dataclass of the YAML keys.
    start : callable
        ``start(config)``: a context manager yielding a ``distributed.Client``.
    module : str, optional
        Module imported before starting (the launcher).
    package, extra : str, optional
        The distribution providing ``module`` and bignmf's extra that installs it.
    """

    options: type
    start: Callable[[ClusterConfig], contextlib.AbstractContextManager]
    module: str | None = None
    package: str | None = None
    extra: str | None = None


KINDS: dict[str, Kind] = {
    "local": Kind(LocalOptions, _start_local),
    "address": Kind(AddressOptions, _start_address),
    "slurm": Kind(SlurmOptions, _start_jobqueue, "dask_jobqueue", "dask-jobqueue", "slurm"),
    "pbs": Kind(PBSOptions, _start_jobqueue, "dask_jobqueue", "dask-jobqueue", "pbs"),
    "kubernetes": Kind(
        KubernetesOptions,
        _start_kubernetes,
        "dask_kubernetes.operator",
        "dask-kubernetes",
        "kubernetes",
    ),
    "ssh": Kind(SSHOptions, _start_ssh, "asyncssh", "asyncssh", "ssh"),
}
"""The kinds of cluster a configuration may name."""


def connect(config: str | os.PathLike | Mapping | ClusterConfig) -> Any:
    """Start (or join) the cluster a configuration describes.

    Parameters
    ----------
    config : path, mapping or ClusterConfig
        A YAML file with a ``kind`` key (see :func:`load_config` and :data:`KINDS`).

    Returns
    -------
    context manager
        Yields a ``distributed.Client`` for :func:`bignmf.nmf`'s ``scheduler``, once the
        configuration's ``wait_for_workers`` have joined; on exit, closes the client and the
        cluster it started (the jobs, pods or processes; a cluster joined by ``address`` is
        left running).

    Raises
    ------
    ClusterConfigError
        The configuration is malformed (raised at once, before anything starts), or a file
        of its ``security`` section cannot be read or loaded (raised on entering, before
        anything starts).
    MissingLauncherError
        The kind's launcher is not installed; the message names bignmf's extra.

    Examples
    --------
    >>> with bignmf.connect("cluster_configs/local.yaml") as client:  # doctest: +SKIP
    ...     result = bignmf.nmf("docs.zarr", 20, scheduler=client)
    """
    checked = load_config(config)
    return KINDS[checked.kind].start(checked)


def job_script(config: str | os.PathLike | Mapping | ClusterConfig) -> str:
    """The batch script a ``slurm`` or ``pbs`` configuration submits for each job.

    Starts the configuration's scheduler (here, as :func:`connect` does) to learn its address,
    submits nothing, and closes it again.

    Parameters
    ----------
    config : path, mapping or ClusterConfig

    Returns
    -------
    str
        dask-jobqueue's ``cluster.job_script()``.
    """
    checked = load_config(config)
    if not isinstance(checked.options, JobQueueOptions):
        raise ClusterConfigError(
            f"{checked.source}: job_script() needs kind slurm or pbs, got kind {checked.kind!r}"
        )
    with _jobqueue_cluster(checked) as cluster:
        return cluster.job_script()


def kubernetes_spec(config: str | os.PathLike | Mapping | ClusterConfig) -> dict:
    """The ``DaskCluster`` resource a ``kubernetes`` configuration creates.

    Parameters
    ----------
    config : path, mapping or ClusterConfig

    Returns
    -------
    dict
        ``dask_kubernetes.operator.make_cluster_spec(...)``, as :func:`connect` submits it.
    """
    checked = load_config(config)
    if checked.kind != "kubernetes":
        raise ClusterConfigError(
            f"{checked.source}: kubernetes_spec() needs kind kubernetes, got kind {checked.kind!r}"
        )
    operator = _launcher(checked.kind)
    options = checked.options
    per_pod = {"cpu": str(options.cores)}
    if options.memory is not None:
        per_pod["memory"] = options.memory
    threads = options.cores // options.n_processes
    command = ["dask", "worker", "--nworkers", str(options.n_processes), "--nthreads", str(threads)]
    spec = operator.make_cluster_spec(
        name=options.name,
        image=options.image,
        n_workers=options.pods,
        resources={"requests": dict(per_pod), "limits": dict(per_pod)},
        env=dict(options.env),
        worker_command=command,
    )
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        for container in pod["containers"]:
            # distributed 2026.6 removed the dask-scheduler script the operator's template runs.
            if container.get("args", [None])[0] == "dask-scheduler":
                container["args"] = ["dask", "scheduler", *container["args"][1:]]
            if options.volumes:
                container["volumeMounts"] = [
                    {"name": v.claim, "mountPath": v.mount_path} for v in options.volumes
                ]
        if options.volumes:
            pod["volumes"] = [
                {"name": v.claim, "persistentVolumeClaim": {"claimName": v.claim}}
                for v in options.volumes
            ]
    return spec


@contextlib.contextmanager
def scheduler_for(
    spec: str | None = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = "auto",
) -> Iterator[Any]:
    """Yield what :func:`bignmf.nmf` takes as ``scheduler`` for a command-line choice.

    Parameters
    ----------
    spec : str
        ``'local'`` (an embedded LocalCluster on 127.0.0.1 with one single-threaded worker
        process per core), ``'threads'``, ``'sync'``, or a scheduler address such as
        ``tcp://10.0.0.5:8786``.
    n_workers, threads_per_worker, memory_limit
        Size of the embedded LocalCluster.
    """
    spec = spec or "local"
    if spec in LOCAL_KINDS:
        yield spec
        return
    if spec == "local":
        options = LocalOptions(
            workers=n_workers, threads=threads_per_worker, memory_limit=memory_limit
        )
        with _start_local(ClusterConfig("local", options)) as client:
            yield client
        return
    address = AddressOptions(address=spec, wait_for_workers=0)
    with _start_address(ClusterConfig("address", address)) as client:
        yield client


def dashboard(client: Any) -> str | None:
    """One line about the Dask dashboard of a cluster started or joined: its address when its
    scheduler can serve it, else how to get one; None for ``threads``/``sync`` (no cluster).

    Parameters
    ----------
    client : distributed.Client or str
        What :func:`scheduler_for` or :func:`connect` yields.

    Returns
    -------
    str or None

    Notes
    -----
    The dashboard's pages need bokeh (the ``dashboard`` extra) where the scheduler runs:
    without it the scheduler's HTTP server answers but ``/status`` does not exist, so its
    link would be a dead one. Whether bokeh is there is asked of the scheduler itself (for a
    joined one it may differ from here); the link is the one distributed reports — for the
    clusters bignmf starts, on 127.0.0.1 (:data:`DASHBOARD_ADDRESS`).
    """
    link = getattr(client, "dashboard_link", None)
    if isinstance(client, str) or client is None or not link:
        return None
    try:
        # a lambda is sent by value: the scheduler need not have bignmf installed
        served = client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None)
    except Exception:  # an older or restricted scheduler: show the link, unchecked
        served = True
    if not served:
        return (
            "no Dask dashboard: it needs bokeh where the scheduler runs "
            "(pip install 'bignmf-dask[dashboard]')"
        )
    return f"Dask dashboard: {link}"


__all__ = [
    "DASHBOARD_ADDRESS",
    "KINDS",
    "WORKER_ENV",
    "AddressOptions",
    "ClusterConfig",
    "ClusterConfigError",
    "JobQueueOptions",
    "Kind",
    "KubernetesOptions",
    "LocalOptions",
    "MissingLauncherError",
    "PBSOptions",
    "SSHOptions",
    "SecurityOptions",
    "SlurmOptions",
    "TLSOptions",
    "VolumeOptions",
    "connect",
    "dashboard",
    "job_script",
    "kubernetes_spec",
    "load_config",
    "make_security",
    "scheduler_for",
]
