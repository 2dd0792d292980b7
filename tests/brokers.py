"""Real MQTT brokers for the tests: mosquitto on free loopback ports."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadgen.certs.ca import CA, init_ca, server_cert
from loadgen.files import write
from loadgen.lifeline import die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where every connect is refused while the block runs:
    bound but not listening, so nothing else (another test's server, another
    xdist worker's, a connection's source port) can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def scrape_once_written(
    process: subprocess.Popen, report: Path, port: int, timeout: float, host: str = "127.0.0.1"
) -> bytes:
    """/metrics of a lingering ``loadgen`` once its report is written (it must
    not exit first, nor take longer than ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not report.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{report} not written in {timeout:.0f} s"
        time.sleep(0.1)
    return urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read()


def stop_process(process: subprocess.Popen) -> None:
    """Ask it to stop; kill it if it has not within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Mosquitto:
    tls_port: int
    plain_port: int
    server_ca: CA  # signs the broker's certificate: the devices' trust
    log: Path
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.process)


_PORT_ATTEMPTS = 5


def start_mosquitto(root: Path, device_ca_pem: Path, *, password_file: Path | None = None):
    """mosquitto with a mutual-TLS listener (``require_certificate true``, the
    device CA as ``cafile``) and a plain listener, both on loopback."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    root.mkdir(parents=True, exist_ok=True)
    server_ca = init_ca(root / "server-ca", subject="CN=test server CA", force=True)
    cert, key = server_cert(server_ca, ["localhost", "127.0.0.1"])
    write(root / "server.pem", cert)
    write(root / "server.key", key, private=True)
    auth = (
        f"allow_anonymous false\npassword_file {password_file}\n"
        if password_file
        else "allow_anonymous true\n"
    )
    config = root / "mosquitto.conf"
    log = root / "mosquitto.log"
    # A port found free can be taken before mosquitto binds it (by another
    # xdist worker's server): mosquitto then says so in its log and exits, and
    # it is started again on other ports.
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        tls_port, plain_port = free_port(), free_port()
        config.write_text(
            "user root\n"
            "per_listener_settings true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_keepalive 65535\n"
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {device_ca_pem}\n"
            f"certfile {root / 'server.pem'}\n"
            f"keyfile {root / 'server.key'}\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
            "allow_anonymous true\n"
            f"listener {plain_port} 127.0.0.1\n" + auth
        )
        log.write_bytes(b"")
        process = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Whoever started it (a test session, a benchmark, a script) may
            # die without stopping it: the kernel then ends it too.
            preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM),
        )
        try:
            wait_for_port(tls_port, process=process)
            wait_for_port(plain_port, process=process)
        except RuntimeError:
            process.wait()
            if "Address already in use" not in log.read_text() or attempt == _PORT_ATTEMPTS:
                raise
            continue
        except Exception:
            process.kill()
            process.wait()
            raise
        break
    return Mosquitto(tls_port, plain_port, server_ca, root / "mosquitto.log", process)


class Listener:
    """A paho subscriber on mosquitto's plain listener: what devices published,
    so a test can wait on devices having really done their steps."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        import threading

        import paho.mqtt.client as paho

        self.count = 0
        self._changed = threading.Condition()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._received
        self._client.connect("127.0.0.1", broker.plain_port)
        self._client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise TimeoutError(f"not subscribed to {topic_filter} after 10 s")

    def _received(self, *_: object) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float, process: subprocess.Popen | None = None) -> None:
        """Until ``count`` messages arrived (``process`` must not end first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < count:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"process exited with {process.returncode} first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.count} of {count} messages after {timeout} s")
                self._changed.wait(min(left, 0.2))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
