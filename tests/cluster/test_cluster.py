"""Cluster set-up from YAML: every kind checked, the ones that can run here run bignmf.

``local``, ``address`` (TCP, scheduler file and TLS) and ``ssh`` (when an sshd can be started
on 127.0.0.1) start real clusters and must give the threaded result bit for bit; ``slurm``,
``pbs`` and ``kubernetes`` cannot run here and are checked through the job script and the
resource they would submit.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

import bignmf
from bignmf.cli import main
from bignmf.cluster.config import (
    KINDS,
    WORKER_ENV,
    ClusterConfigError,
    MissingLauncherError,
    connect,
    job_script,
    kubernetes_spec,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"
# Servers started here bind to 127.0.0.1 and have no dashboard on a fixed port.
QUIET_SCHEDULER = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    A = sp.random(300, 40, density=0.15, format="csr", random_state=4)
    return bignmf.convert(A, tmp_path_factory.mktemp("cluster") / "a.zarr", block_rows=32)


def fit(store, scheduler):
    return bignmf.nmf(store, 3, init="random", random_state=1, tol=0, max_iter=5,
                      scheduler=scheduler)  # fmt: skip


@pytest.fixture(scope="module")
def reference(store):
    return fit(store, "threads")


def assert_same_bits(result, reference) -> None:
    assert np.asarray(result.W).tobytes() == np.asarray(reference.W).tobytes()
    assert result.H.tobytes() == reference.H.tobytes()
    assert result.loss_history == reference.loss_history


# ---------------------------------------------------------------------------------------------
# Reading and checking configurations.


def test_every_shipped_config_is_valid_and_every_kind_has_one():
    kinds = {load_config(path).kind for path in sorted(CONFIGS.glob("*.yaml"))}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_is_named_after_its_kind(path):
    config = load_config(path)
    assert config.kind == path.stem
    assert config.source == str(path)


SLURM = {"kind": "slurm", "cores": 8, "memory": "32GiB"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"workers": 2}, r"missing key 'kind'; valid kinds: address, kubernetes, local, pbs, "
                         r"slurm, ssh"),
        ({"kind": "slrum"}, r"unknown kind 'slrum' \(did you mean 'slurm'\?\); valid kinds: "),
        ({"kind": ["local"]}, r"unknown kind \['local'\]; valid kinds: "),
        ({"kind": "local", "wokers": 2}, r"unknown key 'wokers' \(did you mean 'workers'\?\) in "
                                         r"kind 'local'; valid keys: dashboard_address, env, "
                                         r"kind, memory_limit, security, threads, workers$"),
        ({"kind": "local", "workers": "2"}, r"'workers' must be a positive integer, got '2'"),
        ({"kind": "local", "threads": 0}, r"'threads' must be a positive integer, got 0"),
        ({"kind": "local", "memory_limit": "lots"}, r"'memory_limit' must be 'auto', a size"),
        ({"kind": "local", "env": {"A": True}}, r"'env' must be a mapping of variable names"),
        ({"kind": "slurm", "cores": 8}, r"missing key 'memory' in kind 'slurm'; valid keys: "
                                        r"account, cores, env, interface, job_extra_directives"),
        ({**SLURM, "walltime": 43200}, r"'walltime' must be a string such as '04:00:00' \(quote"),
        ({**SLURM, "memory": "32 gigs"}, r"'memory' must be a size such as '64GiB'"),
        ({**SLURM, "processes": 3}, r"kind 'slurm': 'processes' \(3\) must divide 'cores' \(8\)"),
        ({**SLURM, "job_extra_directives": "--exclusive"},
         r"'job_extra_directives' must be a list of strings"),
        ({**SLURM, "kind": "pbs", "partition": "x"}, r"unknown key 'partition' in kind 'pbs'"),
        ({"kind": "address"}, r"kind 'address': give exactly one of 'address' and "
                              r"'scheduler_file'"),
        ({"kind": "address", "address": "tcp://h:8786", "tls": {"ca_file": "a", "cert": "b",
          "key": "c"}}, r"'address' must start with tls:// when 'tls' is set"),
        ({"kind": "address", "address": "tls://h:8786", "tls": {"ca_file": "a", "cert": "b"}},
         r"missing key 'tls.key' in 'tls'; valid keys: ca_file, cert, key, "
         r"require_encryption$"),
        ({"kind": "address", "address": "tls://h:8786", "tls": {"ca": "a"}},
         r"unknown key 'tls.ca' \(did you mean 'tls.ca_file'\?\)|unknown key 'tls.ca'"),
        ({"kind": "address", "address": "tls://h:8786", "tls": "ca.pem"},
         r"'tls' must be a mapping of keys, got str"),
        ({"kind": "kubernetes", "pods": 2}, r"missing key 'image' in kind 'kubernetes'"),
        ({"kind": "kubernetes", "image": "i", "volumes": [{"claim": "d", "mount_path": "data"}]},
         r"'volumes\[0\].mount_path' must be an absolute path"),
        ({"kind": "ssh", "hosts": ["a"]}, r"'hosts' must be a list of at least two hosts"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_file_and_key(tmp_path, config, message):
    path = write_yaml(tmp_path / "cluster.yaml", config)
    with pytest.raises(ClusterConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(ClusterConfigError, match=message):
        load_config(config)  # the same content as a mapping


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: local\nworkers: [2\n", r"cluster.yaml: not valid YAML"),
        ("", r"cluster.yaml: expected a mapping with a 'kind' key \(valid kinds: .*\), got None"),
        ("- kind: local\n", r"expected a mapping with a 'kind' key .* got list"),
        # The safe loader builds no Python objects.
        ("kind: !!python/object/apply:os.system [echo hi]\n", r"cluster.yaml: not valid YAML"),
    ],
)
def test_files_that_are_not_configurations(tmp_path, text, message):
    (tmp_path / "cluster.yaml").write_text(text)
    with pytest.raises(ClusterConfigError, match=message):
        load_config(tmp_path / "cluster.yaml")


def test_defaults_env_and_relative_paths(tmp_path):
    local = load_config({"kind": "local"}).options
    assert (local.workers, local.threads, local.memory_limit) == (None, 1, "auto")
    assert local.env == WORKER_ENV
    env = load_config({"kind": "local", "env": {"OMP_NUM_THREADS": 2, "MALLOC_TRIM_THRESHOLD_":
                                                None, "EXTRA": "x y"}}).options.env  # fmt: skip
    expected = {**WORKER_ENV, "OMP_NUM_THREADS": "2", "EXTRA": "x y"}
    del expected["MALLOC_TRIM_THRESHOLD_"]
    assert env == expected
    (tmp_path / "conf").mkdir()
    path = write_yaml(tmp_path / "conf" / "a.yaml", {
        "kind": "address", "address": "tls://h:1",
        "tls": {"ca_file": "certs/ca.pem", "cert": "/abs/c.pem", "key": "~/k.pem"},
    })  # fmt: skip
    tls = load_config(path).options.tls
    assert tls.ca_file == tmp_path / "conf" / "certs" / "ca.pem"
    assert tls.cert == Path("/abs/c.pem")
    assert tls.key == Path("~/k.pem").expanduser()


# ---------------------------------------------------------------------------------------------
# Launchers that are not installed: the error names the extra, and nothing starts.


@pytest.mark.parametrize(
    ("config", "module", "extra"),
    [
        (SLURM, "dask_jobqueue", "slurm"),
        ({**SLURM, "kind": "pbs"}, "dask_jobqueue", "pbs"),
        ({"kind": "kubernetes", "image": "bignmf:1"}, "dask_kubernetes", "kubernetes"),
        ({"kind": "ssh", "hosts": ["a", "b"]}, "asyncssh", "ssh"),
    ],
)
def test_missing_launcher_names_the_extra(monkeypatch, config, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    monkeypatch.delitem(sys.modules, f"{module}.operator", raising=False)
    message = rf"cluster kind '{config['kind']}' needs .*pip install 'bignmf-dask\[{extra}\]'"
    with pytest.raises(MissingLauncherError, match=message), connect(config):
        pytest.fail("no cluster may start")
    if extra in ("slurm", "pbs"):
        with pytest.raises(MissingLauncherError, match=message):
            job_script(config)
    if extra == "kubernetes":
        with pytest.raises(MissingLauncherError, match=message):
            kubernetes_spec(config)


def test_launcher_helpers_refuse_other_kinds():
    with pytest.raises(ClusterConfigError, match=r"job_script\(\) needs kind slurm or pbs"):
        job_script({"kind": "local"})
    with pytest.raises(ClusterConfigError, match=r"kubernetes_spec\(\) needs kind kubernetes"):
        kubernetes_spec(SLURM)


# ---------------------------------------------------------------------------------------------
# slurm, pbs and kubernetes: what they would submit.


def test_slurm_job_script():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (bignmf-dask[slurm]) not installed")
    script = job_script({
        **SLURM, "jobs": 3, "walltime": "02:00:00", "queue": "compute", "account": "proj42",
        "job_extra_directives": ["--exclusive"], "prologue": ["module load python/3.11"],
        "env": {"EXTRA": "a b"}, "local_directory": "$TMPDIR",
        "scheduler_options": QUIET_SCHEDULER,
    })  # fmt: skip
    lines = script.splitlines()
    for line in ("#SBATCH -p compute", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 02:00:00", "#SBATCH --exclusive", "module load python/3.11",
                 "export EXTRA='a b'"):  # fmt: skip
        assert line in lines, script
    for name, value in WORKER_ENV.items():
        assert f"export {name}={value}" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    worker = lines[-1]
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in worker
    assert "--nworkers 8" in worker
    assert "--nthreads 1" in worker
    assert "--local-directory $TMPDIR" in worker
    # The environment is exported before the workers start.
    assert lines.index("export EXTRA='a b'") < len(lines) - 1


def test_pbs_job_script_from_a_file(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (bignmf-dask[pbs]) not installed")
    path = write_yaml(tmp_path / "pbs.yaml", {
        "kind": "pbs", "cores": 16, "memory": "64GB", "processes": 4, "walltime": "12:00:00",
        "queue": "workq", "account": "proj", "resource_spec": "select=1:ncpus=16:mem=64GB",
        "scheduler_options": QUIET_SCHEDULER,
    })  # fmt: skip
    script = job_script(path)
    lines = script.splitlines()
    for line in ("#PBS -q workq", "#PBS -A proj", "#PBS -l select=1:ncpus=16:mem=64GB",
                 "#PBS -l walltime=12:00:00"):  # fmt: skip
        assert line in lines, script
    assert "--nworkers 4 " in lines[-1]
    assert "--nthreads 4 " in lines[-1]


def test_kubernetes_resource():
    pytest.importorskip(
        "dask_kubernetes.operator", reason="dask-kubernetes (bignmf-dask[kubernetes]) not installed"
    )
    spec = kubernetes_spec({
        "kind": "kubernetes", "image": "registry.example.org/bignmf:1", "name": "topics",
        "pods": 3, "cores": 4, "memory": "16Gi", "env": {"EXTRA": "1"},
        "volumes": [{"claim": "bignmf-data", "mount_path": "/data"}],
    })  # fmt: skip
    assert spec["kind"] == "DaskCluster"
    assert spec["metadata"]["name"] == "topics"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 3
    (container,) = worker["spec"]["containers"]
    assert container["image"] == "registry.example.org/bignmf:1"
    assert container["args"][:6] == ["dask", "worker", "--nworkers", "4", "--nthreads", "1"]
    per_pod = {"cpu": "4", "memory": "16Gi"}
    assert container["resources"] == {"requests": per_pod, "limits": per_pod}
    assert {e["name"]: e["value"] for e in container["env"]} == {**WORKER_ENV, "EXTRA": "1"}
    assert container["volumeMounts"] == [{"name": "bignmf-data", "mountPath": "/data"}]
    assert worker["spec"]["volumes"] == [
        {"name": "bignmf-data", "persistentVolumeClaim": {"claimName": "bignmf-data"}}
    ]
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert scheduler["volumeMounts"] == container["volumeMounts"]


# ---------------------------------------------------------------------------------------------
# local and address: real clusters.


def test_local_yaml_equals_threads_bitwise(tmp_path, store, reference):
    path = write_yaml(tmp_path / "local.yaml", {
        "kind": "local", "workers": 2, "memory_limit": "1GiB", "env": {"BIGNMF_TEST": "yes"},
    })  # fmt: skip
    with bignmf.connect(path) as client:
        assert list(client.nthreads().values()) == [1, 1]
        env = client.run(lambda: {k: os.environ.get(k) for k in [*WORKER_ENV, "BIGNMF_TEST"]})
        for worker_env in env.values():
            assert worker_env == {**WORKER_ENV, "BIGNMF_TEST": "yes"}
        assert_same_bits(fit(store, client), reference)
        cluster = client.cluster
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_address_yaml_joins_a_running_scheduler(tmp_path, store, reference, dask_cluster):
    for config in (
        {"kind": "address", "address": dask_cluster, "wait_for_workers": 2},
        {"kind": "address", "scheduler_file": "scheduler.json", "timeout": 30},
    ):
        (tmp_path / "scheduler.json").write_text(json.dumps({"address": dask_cluster}))
        path = write_yaml(tmp_path / "address.yaml", config)
        with bignmf.connect(path) as client:
            assert len(client.nthreads()) >= 1
            assert_same_bits(fit(store, client), reference)
    # The cluster it joined is left running.
    with bignmf.connect({"kind": "address", "address": dask_cluster, "wait_for_workers": 2}):
        pass


def _dask_cli() -> list[str]:
    exe = shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


class Processes:
    """Server processes started for one test, each in its own session, stopped at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for _, log in self.procs)  # fmt: skip

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def _wait_for_file(path: Path, procs: Processes, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs.procs):
            pytest.fail(f"{path.name} never appeared\n{procs.logs()}")
        time.sleep(0.1)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA and two certificates it signs (the servers' and the client's), for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def builder(subject, issuer, key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False))  # fmt: skip

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (builder(name("bignmf test CA"), name("bignmf test CA"), ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for who in ("node", "client"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (builder(name(f"bignmf test {who}"), ca.subject, key)
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
                ]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(aki, critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))  # fmt: skip
        files[who] = folder / f"{who}.pem"
        files[f"{who}-key"] = folder / f"{who}-key.pem"
        files[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}-key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))  # fmt: skip
    return files


def test_address_yaml_with_tls(tmp_path, processes, store, reference):
    certs = tmp_path / "certs"
    certs.mkdir()
    files = _certificates(certs)
    tls = ["--tls-ca-file", str(files["ca"]), "--tls-cert", str(files["node"]), "--tls-key",
           str(files["node-key"])]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    scheduler_file = tmp_path / "scheduler.json"
    processes.start("scheduler", [*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--protocol",
                                  "tls", "--port", "0", "--no-dashboard", "--dashboard-address",
                                  "127.0.0.1:0", "--scheduler-file",
                                  str(scheduler_file), *tls], env)  # fmt: skip
    _wait_for_file(scheduler_file, processes)
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:")
    processes.start("worker", [*_dask_cli(), "worker", address, "--host", "127.0.0.1",
                               "--protocol", "tls", "--nworkers", "1", "--nthreads", "2",
                               "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                               "--memory-limit", "1GiB", "--local-directory",
                               str(tmp_path / "worker"), *tls], env)  # fmt: skip
    path = write_yaml(tmp_path / "address.yaml", {
        "kind": "address", "address": address, "timeout": 60,
        "tls": {"ca_file": "certs/ca.pem", "cert": "certs/client.pem",
                "key": "certs/client-key.pem"},
    })  # fmt: skip
    try:
        with bignmf.connect(path) as client:
            assert client.security.require_encryption
            assert all(w.startswith("tls://") for w in client.nthreads())
            assert_same_bits(fit(store, client), reference)
    except OSError:
        print(processes.logs())
        raise


def test_missing_certificate_is_named(tmp_path):
    config = {"kind": "address", "address": "tls://127.0.0.1:1",
              "tls": {"ca_file": "ca.pem", "cert": "c.pem", "key": "k.pem"}}  # fmt: skip
    cluster = connect(write_yaml(tmp_path / "a.yaml", config))
    message = r"'tls.ca_file' must be a readable file, got '.*ca.pem' \(No such file or direc"
    with pytest.raises(ClusterConfigError, match=message), cluster:
        pytest.fail("connected without certificates")


# ---------------------------------------------------------------------------------------------
# ssh: an sshd of our own on 127.0.0.1, when this machine has one.

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path, processes):
    """Connect options for an sshd on 127.0.0.1 that lets this user in with a fresh key."""
    if SSHD is None:
        pytest.skip("no sshd on this machine (install openssh-server to run the ssh kind here)")
    pytest.importorskip("asyncssh", reason="asyncssh (bignmf-dask[ssh]) not installed")
    folder = tmp_path / "ssh"
    folder.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)],
                       check=True)  # fmt: skip
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "",
    ]))  # fmt: skip
    proc = processes.start("sshd", [SSHD, "-D", "-e", "-f", str(folder / "sshd_config")])
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start here: {processes.logs().strip()}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            break
        if time.monotonic() > deadline:
            pytest.skip("sshd did not listen on 127.0.0.1 within 20 s")
        time.sleep(0.1)
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    return {"port": port, "username": getpass.getuser(),
            "client_keys": [str(folder / "client_key")],
            "known_hosts": str(folder / "known_hosts")}  # fmt: skip


def test_ssh_yaml_on_localhost(tmp_path, sshd, store, reference):
    path = write_yaml(tmp_path / "ssh.yaml", {
        "kind": "ssh", "hosts": ["127.0.0.1", "127.0.0.1"], "workers_per_host": 2,
        "memory_limit": "1GiB", "connect_options": sshd, "remote_python": sys.executable,
        "scheduler_options": {**QUIET_SCHEDULER, "port": 0},
        "worker_options": {"host": "127.0.0.1"}, "env": {"BIGNMF_TEST": "ssh"},
    })  # fmt: skip
    with bignmf.connect(path) as client:
        assert len(client.nthreads()) == 2
        env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                  os.environ.get("BIGNMF_TEST")))  # fmt: skip
        assert set(env.values()) == {(WORKER_ENV["MALLOC_TRIM_THRESHOLD_"], "ssh")}
        assert_same_bits(fit(store, client), reference)


# ---------------------------------------------------------------------------------------------
# The command line, and the SLURM driver script.


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_fit_then_resume_with_a_cluster_file(tmp_path, capsys, store):
    cluster = write_yaml(tmp_path / "local.yaml", {"kind": "local", "workers": 2})
    common = ("-k", 3, "--init", "random", "--seed", 1, "--tol", 0, "--no-progress", "--top", 0)
    status, _, _ = run_cli(capsys, "fit", store.path, "--out", tmp_path / "whole",
                           "--scheduler", "threads", "--max-iter", 6, *common)  # fmt: skip
    assert status == 0
    status, out, _ = run_cli(capsys, "fit", store.path, "--out", tmp_path / "run", "--cluster",
                             cluster, "--max-iter", 3, *common)  # fmt: skip
    assert status == 0, out
    # A later allocation continues the run on the cluster the file describes.
    status, out, _ = run_cli(capsys, "resume", tmp_path / "run", "--cluster", cluster,
                             "--max-iter", 6, "--top", 0, "--no-progress")  # fmt: skip
    assert status == 0, out
    assert "6 iterations" in out
    import zarr

    for name in ("W.zarr", "H.zarr"):
        whole = zarr.open_array(tmp_path / "whole" / name)[...]
        resumed = zarr.open_array(tmp_path / "run" / name)[...]
        assert whole.tobytes() == resumed.tobytes()


def test_cli_cluster_errors(tmp_path, capsys, store):
    bad = write_yaml(tmp_path / "bad.yaml", {"kind": "local", "wokers": 2})
    status, _, err = run_cli(capsys, "fit", store.path, "-k", 2, "--out", tmp_path / "r",
                             "--cluster", bad)  # fmt: skip
    assert status == 2
    assert f"bignmf fit: error: {bad}: unknown key 'wokers'" in err
    assert not (tmp_path / "r").exists()
    good = write_yaml(tmp_path / "good.yaml", {"kind": "local"})
    status, _, err = run_cli(capsys, "fit", store.path, "-k", 2, "--out", tmp_path / "r",
                             "--cluster", good, "--workers", 2)  # fmt: skip
    assert status == 2
    assert "--workers sizes the embedded LocalCluster" in err
    with pytest.raises(SystemExit) as info:
        main(["resume", str(tmp_path / "r"), "--cluster", str(good), "--scheduler", "threads"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_slurm_job_script_fits_then_resumes_then_stops(tmp_path):
    """slurm_job.sh with a stand-in ``bignmf`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "bignmf"
    stub.write_text('#!/usr/bin/env bash\necho "$@" >> "$CALLS"\n')
    stub.chmod(0o755)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "c"),
           "INPUT": "docs.zarr", "RUN_DIR": str(run_dir), "K": "7"}  # fmt: skip

    def submit() -> str:
        done = subprocess.run(["bash", str(CONFIGS / "slurm_job.sh")], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    submit()
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    submit()
    (run_dir / "summary.json").write_text("{}")
    assert "nothing to do" in submit()
    fit_call, resume_call = (tmp_path / "c").read_text().splitlines()
    assert fit_call.startswith(f"fit docs.zarr -k 7 --out {run_dir} --cluster "
                               "cluster_configs/slurm.yaml")  # fmt: skip
    assert resume_call == f"resume {run_dir} --cluster cluster_configs/slurm.yaml --no-progress"
