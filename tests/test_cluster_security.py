"""Dashboards on loopback and TLS from a cluster file's ``security:`` section (issue 17).

A ``local`` cluster with TLS really starts on 127.0.0.1 and fits bit for bit as the threaded
scheduler; an ``address`` file joins it with the same certificate and a client without one is
refused. The kinds whose launcher cannot run here (slurm, pbs, ssh, kubernetes) are checked
through what bignmf would hand the launcher: its class is replaced by one that records its
keyword arguments.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import sys
import time
import types
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest
import scipy.sparse as sp
import yaml
from distributed import Client
from distributed.comm.core import CommClosedError
from distributed.security import Security

import bignmf
from bignmf.cluster.config import (
    DASHBOARD_ADDRESS,
    ClusterConfigError,
    SecurityOptions,
    connect,
    job_script,
    load_config,
    make_security,
)

CONFIGS = Path(__file__).resolve().parents[1] / "cluster_configs"
SLURM = {"kind": "slurm", "cores": 2, "memory": "1GiB"}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _certificates(folder: Path, name: str) -> dict[str, str]:
    """A CA and one certificate it signs for 127.0.0.1 (server and client), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def builder(subject: str, issuer: str, key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))  # fmt: skip

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (builder(f"{name} CA", f"{name} CA", ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    cert = (builder(f"{name} node", f"{name} CA", key)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    files = {"ca_file": folder / f"{name}-ca.pem", "cert": folder / f"{name}.pem",
             "key": folder / f"{name}-key.pem"}  # fmt: skip
    files["ca_file"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return _certificates(tmp_path_factory.mktemp("tls"), "bignmf")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory) -> dict[str, str]:
    """A certificate signed by another CA."""
    return _certificates(tmp_path_factory.mktemp("rogue"), "rogue")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    A = sp.random(200, 30, density=0.2, format="csr", random_state=3)
    return bignmf.convert(A, tmp_path_factory.mktemp("store") / "a.zarr", block_rows=32)


def fit(store, scheduler):
    return bignmf.nmf(store, 3, random_state=0, tol=0, max_iter=5, scheduler=scheduler)


@pytest.fixture(scope="module")
def reference(store):
    return fit(store, "threads")


def assert_same_bits(result, reference) -> None:
    assert result.H.tobytes() == reference.H.tobytes()
    assert np.asarray(result.W).tobytes() == np.asarray(reference.W).tobytes()
    assert result.loss_history == reference.loss_history


@pytest.fixture(scope="module")
def tls_client(tmp_path_factory, certs):
    """A client of a ``kind: local`` cluster with TLS (two workers), closed after the module."""
    path = write_yaml(tmp_path_factory.mktemp("local") / "local.yaml", {
        "kind": "local", "workers": 2, "memory_limit": "1GiB", "security": certs,
    })  # fmt: skip
    with connect(path) as client:
        yield client
    assert client.cluster.status.name == "closed"


def _listening(pid: int | None = None) -> set[tuple[str, int]]:
    """(host, port) of each socket the process listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# local and address: a real TLS cluster on 127.0.0.1.


def test_local_tls_cluster_fits_like_threads(tls_client, store, reference):
    assert tls_client.scheduler.address.startswith("tls://127.0.0.1:")
    assert all(w.startswith("tls://127.0.0.1:") for w in tls_client.nthreads())
    assert len(tls_client.nthreads()) == 2
    assert tls_client.security.require_encryption
    assert_same_bits(fit(store, tls_client), reference)


def test_local_tls_cluster_listens_on_loopback_only(tls_client):
    scheduler = tls_client.cluster.scheduler
    ports = {scheduler.port, scheduler.http_server.port}  # the comm port and the dashboard
    assert {host for host, port in _listening() if port in ports} == {"127.0.0.1"}
    assert tls_client.dashboard_link.startswith("http://127.0.0.1:")
    for listeners in tls_client.run(_listening).values():
        assert {host for host, _ in listeners} == {"127.0.0.1"}


def test_address_kind_joins_the_tls_cluster(tmp_path, tls_client, certs, store, reference):
    path = write_yaml(tmp_path / "address.yaml", {
        "kind": "address", "address": tls_client.scheduler.address, "security": certs,
        "wait_for_workers": 2, "timeout": 30,
    })  # fmt: skip
    with connect(path) as client:
        assert client.security.require_encryption
        assert client.scheduler.address == tls_client.scheduler.address
        assert_same_bits(fit(store, client), reference)


def test_a_client_without_the_certificate_is_refused(tls_client, certs, rogue):
    port = tls_client.scheduler.address.rsplit(":", 1)[1]
    # The scheduler refuses a plain TCP client, and one whose certificate its CA did not sign
    # (the client trusts the scheduler's CA, so the refusal is the scheduler's).
    unsigned = {**rogue, "ca_file": certs["ca_file"]}
    unsigned = make_security(SecurityOptions(**{k: Path(v) for k, v in unsigned.items()}))
    for address, security in ((f"tcp://127.0.0.1:{port}", None),
                              (tls_client.scheduler.address, unsigned)):  # fmt: skip
        with pytest.raises(CommClosedError), Client(address, security=security, timeout=5):
            pytest.fail(f"connected to the TLS scheduler at {address}")
    assert len(tls_client.nthreads()) == 2  # and it goes on serving its own clients


# ---------------------------------------------------------------------------------------------
# The security section: one-line errors naming the file and the key.


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"kind": "local"}, "security.key"),
        ({"kind": "address", "address": "tls://127.0.0.1:1"}, "security.key"),
        ({**SLURM, "scheduler_options": {"host": "127.0.0.1"}}, "security.key"),
        ({**SLURM, "kind": "pbs"}, "security.key"),
        ({"kind": "ssh", "hosts": ["127.0.0.1", "127.0.0.1"]}, "security.key"),
    ],
    ids=["local", "address", "slurm", "pbs", "ssh"],
)
def test_missing_key_file_is_a_one_line_error(tmp_path, certs, config, key):
    missing = tmp_path / "certs" / "missing-key.pem"
    path = write_yaml(tmp_path / "cluster.yaml", {
        **config, "security": {**certs, "key": "certs/missing-key.pem"},
    })  # fmt: skip
    with pytest.raises(ClusterConfigError) as info, connect(path):
        pytest.fail("a cluster started without its key")
    message = str(info.value)
    assert message == (f"{path}: '{key}' must be a readable file, got '{missing}' "
                       "(No such file or directory)")  # fmt: skip
    assert "\n" not in message


def test_security_file_errors_name_the_key(tmp_path, certs):
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "folder.pem").mkdir()
    cases = [
        # The former name of the section, in an address file: the error says 'tls'.
        ({"kind": "address", "address": "tls://127.0.0.1:1", "tls": {**certs, "ca_file": "no"}},
         rf"'tls.ca_file' must be a readable file, got '{tmp_path / 'no'}' \(No such file"),
        ({"kind": "local", "security": {**certs, "cert": "folder.pem"}},
         r"'security.cert' must be a readable file, got .*folder.pem' \(Is a directory\)$"),
        ({"kind": "local", "security": {**certs, "cert": "garbage.pem"}},
         r"'security': ca_file, cert and key must be PEM files of a certificate authority"),
        # A key that is not the certificate's.
        ({"kind": "local", "security": {**certs, "key": str(tmp_path / "rogue-key.pem")}},
         r"'security': ca_file, cert and key must be PEM files .*KEY_VALUES_MISMATCH"),
    ]  # fmt: skip
    _certificates(tmp_path, "rogue")
    for config, message in cases:
        path = write_yaml(tmp_path / "cluster.yaml", config)
        with pytest.raises(ClusterConfigError, match=message) as info, connect(path):
            pytest.fail("a cluster started with a bad security section")
        assert str(info.value).startswith(f"{path}: ")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "local", "security": {"ca_file": "a", "cert": "b"}},
         r"missing key 'security.key' in 'security'; valid keys: ca_file, cert, key, "
         r"require_encryption$"),
        ({"kind": "local", "security": {"ca_file": "a", "cert": "b", "key": "c",
                                        "require_encryption": "yes"}},
         r"'security.require_encryption' must be true or false, got 'yes'"),
        ({"kind": "address", "address": "tcp://h:8786", "security": {"ca_file": "a", "cert": "b",
                                                                     "key": "c"}},
         r"'address' must start with tls:// when 'security' is set"),
        ({"kind": "address", "address": "tls://h:8786", "security": {"ca_file": "a", "cert": "b",
          "key": "c"}, "tls": {"ca_file": "a", "cert": "b", "key": "c"}},
         r"give 'security' or its former name 'tls', not both"),
        ({"kind": "kubernetes", "image": "i", "security": {"ca_file": "a", "cert": "b",
                                                           "key": "c"}},
         r"kind 'kubernetes' takes no 'security': the dask-kubernetes operator connects to its "
         r"scheduler over tcp:// only"),
    ],
    ids=["missing-key", "not-a-flag", "tcp-address", "security-and-tls", "kubernetes"],
)  # fmt: skip
def test_bad_security_sections(tmp_path, config, message):
    path = write_yaml(tmp_path / "cluster.yaml", config)
    with pytest.raises(ClusterConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_one_security_object_for_every_role(certs):
    section = load_config({"kind": "local", "security": certs}).options.security
    assert section.require_encryption
    security = make_security(section)
    for role in ("client", "scheduler", "worker"):
        tls = security.get_tls_config_for_role(role)
        assert {k: tls[k] for k in ("ca_file", "cert", "key")} == certs
    relaxed = load_config({"kind": "local", "security": {**certs, "require_encryption": False}})
    assert not make_security(relaxed.options.security).require_encryption
    assert make_security(None) is None


# ---------------------------------------------------------------------------------------------
# Dashboards: on loopback in every shipped file and by default, unless a file says otherwise.


def _dashboard(config) -> str | None:
    options = config.options
    if config.kind == "local":
        return options.dashboard_address
    if config.kind in ("slurm", "pbs", "ssh"):
        return options.scheduler_options["dashboard_address"]
    # address starts no scheduler; kubernetes' stays behind the scheduler's ClusterIP Service
    # (the operator retires workers through its HTTP API).
    return None


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_dashboard_on_loopback(path):
    config = load_config(path)
    dashboard = _dashboard(config)
    if config.kind in ("address", "kubernetes"):
        assert dashboard is None
    else:
        assert dashboard.startswith("127.0.0.1:"), dashboard
    if config.kind in ("slurm", "pbs"):
        # The scheduler's comm port is left where the workers on the compute nodes reach it.
        assert not {"host", "interface"} & set(config.options.scheduler_options)


@pytest.mark.parametrize(
    "config",
    [{"kind": "local"}, SLURM, {**SLURM, "kind": "pbs"}, {"kind": "ssh", "hosts": ["a", "b"]}],
    ids=["local", "slurm", "pbs", "ssh"],
)
def test_default_dashboard_on_loopback(config):
    assert _dashboard(load_config(config)).startswith("127.0.0.1:")
    if config["kind"] == "local":
        return
    assert _dashboard(load_config(config)) == DASHBOARD_ADDRESS
    # Other scheduler options keep the default; a file may still choose another address.
    given = load_config({**config, "scheduler_options": {"port": 8786}}).options
    assert given.scheduler_options == {"port": 8786, "dashboard_address": DASHBOARD_ADDRESS}
    anywhere = {**config, "scheduler_options": {"dashboard_address": ":8787"}}
    assert _dashboard(load_config(anywhere)) == ":8787"


# ---------------------------------------------------------------------------------------------
# slurm, pbs and ssh: what their launchers are given.


class _Recorded(Exception):
    """Raised by a stand-in launcher once it has recorded its arguments."""


def _recorder(calls: list) -> type:
    """A stand-in launcher class recording its keyword arguments and the Dask configuration."""

    class Launcher:
        def __init__(self, **kwargs):
            tls = {k: dask.config.get(f"distributed.comm.{k}", None)
                   for k in ("require-encryption", "tls.ca-file", "tls.worker.cert",
                             "tls.worker.key", "tls.scheduler.cert")}  # fmt: skip
            calls.append((kwargs, tls))
            raise _Recorded

    return Launcher


@pytest.mark.parametrize(("kind", "cls"), [("slurm", "SLURMCluster"), ("pbs", "PBSCluster")])
def test_jobqueue_kwargs_carry_security(monkeypatch, certs, kind, cls):
    jobqueue = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed")
    calls = []
    monkeypatch.setattr(jobqueue, cls, _recorder(calls))
    for security in (certs, None):
        config = {**SLURM, "kind": kind, "interface": "ib0", "scheduler_options": {"port": 8786}}
        with pytest.raises(_Recorded):
            job_script({**config, "security": security} if security else config)
    (with_tls, _), (without, _) = calls
    assert isinstance(with_tls["security"], Security)
    assert with_tls["security"].require_encryption
    assert with_tls["security"].get_tls_config_for_role("worker")["cert"] == certs["cert"]
    assert "security" not in without
    for kwargs in (with_tls, without):
        assert kwargs["scheduler_options"] == {"port": 8786, "dashboard_address": DASHBOARD_ADDRESS}
        assert kwargs["interface"] == "ib0"  # the workers still reach the scheduler there


def test_slurm_job_script_with_tls(certs):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed")
    script = job_script({**SLURM, "security": certs, "scheduler_options": {"host": "127.0.0.1"}})
    worker = script.splitlines()[-1]
    assert "distributed.cli.dask_worker tls://127.0.0.1:" in worker
    for flag, name in (("--tls-ca-file", "ca_file"), ("--tls-cert", "cert"), ("--tls-key", "key")):
        assert f"{flag} {certs[name]}" in worker


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``scancel`` on PATH that run each job script at once on this machine.

    A job is a session of its own whose id is its process id; ``scancel`` ends the session,
    and so does the fixture for any job left running.
    """
    if shutil.which("setsid") is None or "lo" not in psutil.net_if_addrs():
        pytest.skip("needs setsid and a loopback interface named lo")
    jobs, bin_dir = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/usr/bin/env bash
cp "$1" "{jobs}/job-$$.sh"
setsid bash "{jobs}/job-$$.sh" > "{jobs}/job-$$.log" 2>&1 < /dev/null &
echo $! >> "{jobs}/ids"
echo "Submitted batch job $!"
""")
    (bin_dir / "scancel").write_text('#!/usr/bin/env bash\nkill -TERM -- "-$1" 2>/dev/null; true\n')
    for tool in ("sbatch", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield jobs
    ids = [int(i) for i in (jobs / "ids").read_text().split()] if (jobs / "ids").exists() else []
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for job in ids:
        if psutil.pid_exists(job):
            os.killpg(job, signal.SIGKILL)


def test_slurm_kind_with_tls_runs_a_fit(tmp_path, fake_slurm, certs, store, reference):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed")
    path = write_yaml(tmp_path / "slurm.yaml", {
        **SLURM, "processes": 2, "interface": "lo", "security": certs, "timeout": 60,
        "local_directory": str(tmp_path / "scratch"),
        # A free port: 8787 may be taken on a test machine (distributed would warn).
        "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
    })  # fmt: skip
    with connect(path) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert sorted(client.nthreads().values()) == [1, 1]
        assert all(w.startswith("tls://127.0.0.1:") for w in client.nthreads())
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert_same_bits(fit(store, client), reference)
    (script,) = fake_slurm.glob("job-*.sh")  # one job of two single-threaded workers
    assert f"--tls-cert {certs['cert']}" in script.read_text()


def test_ssh_kwargs_carry_security(monkeypatch, certs):
    import distributed

    monkeypatch.setitem(sys.modules, "asyncssh", types.ModuleType("asyncssh"))
    calls = []
    monkeypatch.setattr(distributed, "SSHCluster", _recorder(calls))
    config = {"kind": "ssh", "hosts": ["a", "b"], "scheduler_options": {"port": 8786}}
    for security in (certs, None):
        with pytest.raises(_Recorded), connect({**config, "security": security} if security
                                               else config):  # fmt: skip
            pytest.fail("no cluster may start")
    (with_tls, inherited), (without, plain) = calls
    assert isinstance(with_tls["security"], Security)
    assert with_tls["scheduler_options"] == {"port": 8786, "dashboard_address": DASHBOARD_ADDRESS,
                                             "protocol": "tls"}  # fmt: skip
    # The remote scheduler and workers get the files through the configuration they inherit.
    assert inherited == {"require-encryption": True, "tls.ca-file": certs["ca_file"],
                         "tls.worker.cert": certs["cert"], "tls.worker.key": certs["key"],
                         "tls.scheduler.cert": certs["cert"]}  # fmt: skip
    assert without["security"] is None
    assert without["scheduler_options"] == {"port": 8786, "dashboard_address": DASHBOARD_ADDRESS}
    assert plain["tls.ca-file"] is None
