from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from loadgen.certs.ca import CA, init_ca
from tests.moto_aws import moto, moto_url  # noqa: F401 (fixtures of the aws tests)

ROOT = Path(__file__).resolve().parent.parent
LIGHTBULB_PROFILE = ROOT / "scenarios" / "profiles" / "lightbulb.yaml"

# Hypothesis's deadline (200 ms an example) and its "generation is slow" health
# check are timing assertions: on a loaded machine (the suite's own workers run
# beside each other) an example took 410 ms once and 27 ms when replayed. What a
# property test asserts is its property; how fast is for the benchmarks.
settings.register_profile(
    "loaded-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("loaded-machine")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_loadgen(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run the real command line, as a user would, in a fresh process (in
    ``env`` instead of this one's environment when given)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def python_in_netns(ports: str, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by this Python in a network namespace of the test's own: its
    loopback up, its ephemeral port range ``ports`` (e.g. "40000 40003"), the
    repository's root as the working folder. Fails the test where unshare or
    ip is missing (util-linux, iproute2)."""
    import shutil

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs unshare and ip (util-linux, iproute2) for a network namespace")
    script = (
        f"ip link set lo up && sysctl -qw net.ipv4.ip_local_port_range='{ports}' && "
        f'exec {sys.executable} -c "$0"'
    )
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", script, code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming what is wrong, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as file:
        fcntl.flock(file, mode)  # waits for the other workers' holds: a real condition
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Under xdist, a test marked ``alone`` (its outcome depends on the machine's
    CPU being there when asked, as a capacity search's verdict on whether the
    generator kept its schedule) runs, setup and fixtures included, while no
    other test of this run does: the others hold a shared lock for each test,
    it an exclusive one. The gate, held by an ``alone`` test while it waits and
    runs, keeps the others from starving it of the exclusive lock."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:  # one process: it is alone already
        return (yield)
    # The run's temporary folder: its workers', no other run's.
    shared = item.config._tmp_path_factory.getbasetemp().parent
    gate, running = shared / "alone.gate", shared / "alone.running"
    if item.get_closest_marker("alone"):
        with _flock(gate, fcntl.LOCK_EX), _flock(running, fcntl.LOCK_EX):
            return (yield)
    with contextlib.ExitStack() as held:
        with _flock(gate, fcntl.LOCK_EX):
            held.enter_context(_flock(running, fcntl.LOCK_SH))
        return (yield)


# What the safety net below killed, said in the terminal summary (a fixture's
# own output at the end of the session is captured with the last test's).
_LEFT_BEHIND = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LEFT_BEHIND] = []


# The files that take longest, slowest first (measured under xdist on 2 cores):
# an xdist worker takes a whole file at a time (--dist loadfile, scripts/test) in
# the order collected, so these start first instead of one of them finishing
# last on its own. Only the order of files changes, and only under xdist.
_SLOWEST_FILES = (
    "test_aws_setup.py",
    "test_input_validation.py",
    "test_aws_emulator.py",
    "test_mint.py",
    "test_emulator_api.py",
    "test_aws_status.py",
    "test_report_input.py",
    "test_run.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: they all sort alike
        rank = {name: i for i, name in enumerate(_SLOWEST_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(pytestconfig: pytest.Config):
    """A safety net, not a fix: a process a test left running (even an orphan,
    which comes back to the suite as its subreaper) is killed when the session
    ends, and named, so a leak shows. Torn down last: the session's own servers
    (mosquitto) are stopped by then. Under xdist each worker is its own session
    and its own subreaper: it kills its own descendants only, never what
    another worker's tests are running."""
    from tests.processes import become_subreaper, kill_descendants

    become_subreaper()
    yield
    left = kill_descendants()
    if left:
        lines = "".join(f"\n  {pid}: {cmd[:200]}" for pid, cmd in left.items())
        message = f"tests left {len(left)} processes running (killed):{lines}"
        pytestconfig.stash[_LEFT_BEHIND].append(message)
        workeroutput = getattr(pytestconfig, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: its controller says it
            workeroutput["left_behind"] = message


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the controller of an xdist run: what a worker's safety net killed."""
    if message := getattr(node, "workeroutput", {}).get("left_behind"):
        node.config.stash[_LEFT_BEHIND].append(f"{node.gateway.id}: {message}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for message in terminalreporter.config.stash.get(_LEFT_BEHIND, []):
        terminalreporter.write_line(message, yellow=True, bold=True)


@pytest.fixture(scope="session")
def session_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return init_ca(tmp_path / "ca")


@pytest.fixture(scope="session")
def device_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """The CA that signs test devices; mosquitto trusts it."""
    return init_ca(tmp_path_factory.mktemp("device-ca") / "ca")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, device_ca: CA):
    from tests.brokers import start_mosquitto

    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"), device_ca.directory / "ca.pem")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def small_fleet(tmp_path_factory: pytest.TempPathFactory, device_ca: CA):
    """40 devices of the device CA, a fifth of them signed by an unknown CA."""
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import Profile
    from loadgen.certs.store import FleetStore

    path = tmp_path_factory.mktemp("fleet") / "small"
    profile = Profile.model_validate(
        {"subject": {"common_name": "dev-{index:03d}"}, "faults": {"unknown_ca": 0.2}}
    )
    mint(MintRequest(path, device_ca.directory, 40, profile, seed=1))
    return FleetStore(path)


def minted_certificates(path: Path, ca: CA, count: int, common_name: str | None, seed: int):
    """``count`` devices of ``ca`` minted into ``path`` (``common_name``: a
    template such as ``dev-{index:03d}``; None: the default profile), as
    certificates."""
    from cryptography import x509

    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import Profile
    from loadgen.certs.store import FleetStore

    profile = (
        Profile.model_validate({"subject": {"common_name": common_name}})
        if common_name is not None
        else None
    )
    mint(MintRequest(path, ca.directory, count, profile, seed=seed))
    return [
        x509.load_pem_x509_certificate((path / d.cert).read_bytes())
        for d in FleetStore(path).devices()
    ]


def device_tls(fleet, mosquitto, fault=None, server_name="localhost"):
    """A device of ``fleet`` with ``fault``, and its TLS (trusting mosquitto)."""
    from loadgen.transport.tls import ClientTls, DeviceTls

    device = next(d for d in fleet.devices() if d.fault == fault)
    shared = ClientTls(ca_file=mosquitto.server_ca.directory / "ca.pem")
    return device, DeviceTls(shared, fleet.path / device.cert, fleet.path / device.key, server_name)


class Disk:
    """A disk that fills, for real: a small tmpfs of the test's own (the ``disk``
    fixture). ``fill`` leaves no byte free, ``free`` gives the space back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            chunk = b"\0" * 4096
            while True:
                try:
                    if os.write(fd, chunk) < len(chunk):
                        chunk = chunk[:1]  # the last page's bytes, one at a time
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    return
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs to fill needs mount (root): {mounted.stderr.strip()}")
    try:
        yield Disk(mount_point)
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
