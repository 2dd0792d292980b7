"""The same device life through aiomqtt (paho), as a cross-check of the native
path and for steady-state work where its connect path does not matter.

aiomqtt runs paho's blocking connect (TCP, TLS and CONNECT) in the event loop's
thread pool: over a real round trip its connect rate is capped by threads divided
by handshake time, and time spent waiting for a thread lands in the measured
latency. Only ``provision`` (scheduled start to connected) is measured here; the
per-phase split needs the native transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from loadgen import mqtt
from loadgen.device.lifecycle import (
    DeviceDriver,
    DeviceResult,
    HoldStep,
    PublishStep,
    RetryState,
    SubscribeStep,
)
from loadgen.device.outcome import Outcome
from loadgen.mqtt.reason import reason_name
from loadgen.transport.client import NOT_TLS, describe_error, lost_after_handshake
from loadgen.transport.errors import (
    AckRefused,
    Closed,
    ClosedBeforeTls,
    NotTls,
    Refused,
    TlsRejected,
    TransportError,
    Unreachable,
)

# paho 2.x hands a 3.1.1 CONNACK's return code over as the MQTT 5 reason code of
# its meaning (3, server unavailable, as 0x88): the return code the server sent.
# One paho does not know reaches us as 0x80, unspecified error.
_V311_RETURN_CODES = {0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


_T = TypeVar("_T")

# aiomqtt's own bound on a publish or subscribe: none, the step's timeout bounds
# them (aiomqtt's default is the client's, which is the connect timeout here).
_OURS = math.inf


def _quiet() -> logging.Logger:
    """paho's and aiomqtt's log: what it says of a device's failure, the device's
    result says (paho's errors reached stderr through logging's last resort,
    "failed to receive on socket" for every connection a server closed)."""
    logger = logging.getLogger("loadgen.device.aiomqtt")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


_QUIET = _quiet()


def _code(reason: ReasonCode | int) -> int:
    return int(reason.value) if isinstance(reason, ReasonCode) else int(reason)


def _connect_error(exc: BaseException) -> TransportError | None:
    """What paho's connect (TCP, then the TLS handshake) raised, as the native
    transport names it; None for what it does not tell apart."""
    if isinstance(exc, socket.gaierror):
        return Unreachable(f"DNS: {exc.strerror or exc}", "tcp")
    if isinstance(exc, ConnectionRefusedError):
        return Refused(describe_error(exc), "tcp")
    if isinstance(exc, ssl.SSLError) and exc.reason in NOT_TLS:
        return NotTls(f"{describe_error(exc)} (the server does not speak TLS here)", "tls")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        # Within paho's connect: before the handshake was done. A TLS server that
        # rejects a certificate says so with an alert (TLS 1.2) or after the
        # client's handshake (TLS 1.3), so this is a connection turned away.
        return ClosedBeforeTls(
            f"{describe_error(exc)} before the server sent any TLS (it does not speak TLS "
            "on this port, or turned the connection away at once)",
            "tls",
        )
    if isinstance(exc, ssl.SSLError):
        return TlsRejected(f"TLS: {describe_error(exc)}", "tls")
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return Unreachable(describe_error(exc), "tcp")
    return None


def _translate(exc: BaseException, version: int, phase: str) -> TransportError:
    """aiomqtt flattens errors to text and codes; recover the cause from them."""
    if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc is not None:
        code = _code(exc.rc)
        if phase == "connack" and code:
            if version != mqtt.MQTT_5:
                code = _V311_RETURN_CODES.get(code, code)
            return AckRefused(f"CONNACK {reason_name(code, version)}", phase, code, version)
    text = str(exc)
    upper = text.upper()
    if isinstance(exc, ssl.SSLError) or "SSL" in upper or "CERTIFICATE" in upper or "TLS" in upper:
        return TlsRejected(f"TLS: {text}", phase)
    if "REFUSED" in upper and "ERRNO" in upper:
        return Refused(text, phase)
    return Closed(text or type(exc).__name__, phase)


def _naming(context: ssl.SSLContext, server_name: str | None) -> ssl.SSLContext:
    """``context``, naming the server ``server_name`` (SNI and the certificate's
    check) in each socket it wraps, as the native transport does. paho names it
    by the host it connects to: an address, once the runner resolved the endpoint."""
    wrap = context.wrap_socket

    def wrap_socket(sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = server_name
        return wrap(sock, *args, **kwargs)

    context.wrap_socket = wrap_socket  # type: ignore[method-assign]
    return context


def _lost(disconnected: asyncio.Future[None]) -> aiomqtt.MqttError:
    """The error of a connection lost, from aiomqtt's ``_disconnected`` (whose
    exception is then retrieved: asyncio complained of it at exit)."""
    exc = disconnected.exception()
    # paho names a connection that dropped 0x80, unspecified error; any other
    # code is the reason of the server's DISCONNECT, said as the native driver does.
    code = _code(exc.rc) if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc is not None else 0x80
    text = "closed by the server"
    if code != 0x80:
        text = f"server sent DISCONNECT {reason_name(code, mqtt.MQTT_5)}"
    error = aiomqtt.MqttError(text)
    error.__cause__ = exc
    return error


class _Client(aiomqtt.Client):
    """aiomqtt's client, whose connect can be given up (timed out, say) without
    leaving its connection open. paho's blocking connect (TCP, TLS, CONNECT)
    runs in the thread pool, where cancelling does not reach it: a connect given
    up while there is closed once it returns (one still queued never starts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = threading.Lock()
        self._abandoned = False
        self._in_pool = False  # paho's connect runs in the thread pool
        # The reason code of the last PUBACK (aiomqtt drops it): a device
        # publishes one message at a time.
        self.puback_code = 0
        # What paho's connect raised, before aiomqtt flattened it to text.
        self.connect_error: BaseException | None = None
        # An MQTT 5 CONNACK's Server Keep Alive (0: none).
        self.server_keepalive = 0
        # What ended a connection before its CONNACK, as the native driver judges
        # it from the error paho's read met (paho only logs it).
        self.lost_before_connack: TransportError | None = None
        self._read_error: OSError | None = None
        recv = self._client._sock_recv

        def sock_recv(bufsize: int) -> bytes:
            try:
                return recv(bufsize)
            except BlockingIOError:
                raise
            except OSError as exc:
                self._read_error = exc
                raise

        self._client._sock_recv = sock_recv  # type: ignore[method-assign]

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.server_keepalive = int(getattr(properties, "ServerKeepAlive", 0) or 0)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self.puback_code = _code(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            # Closed before its CONNACK (JITP's first connect, a certificate
            # refused after a TLS 1.3 handshake): aiomqtt ignores it, and the
            # connect waited out its timeout.
            self.lost_before_connack = lost_after_handshake(
                self._read_error, "connack", tls=self._client._ssl, heard=False
            )
            self._connected.set_exception(aiomqtt.MqttError(self.lost_before_connack.reason))
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _client_connect(self) -> None:  # in the thread pool
        with self._gate:
            if self._abandoned:
                return
            self._in_pool = True
        try:
            super()._client_connect()
        except BaseException as exc:
            self.connect_error = exc
            raise
        finally:
            # After the socket's own callbacks (add_reader, the misc task): FIFO.
            self._loop.call_soon_threadsafe(self._returned)

    def _returned(self) -> None:
        self._in_pool = False
        if self._abandoned:
            self._close()

    def abandon(self) -> None:
        """Give up this connect: close its connection, now or once paho's connect
        in the thread pool returns."""
        with self._gate:
            self._abandoned = True
            running = self._in_pool
        if not running:
            self._close()

    async def hold(self, seconds: float, keepalive: float, answer_within: float) -> None:
        """Stay connected for ``seconds`` as the native driver does: a PINGREQ
        whenever nothing was sent for ``keepalive`` (0: never), not while the last
        one awaits its PINGRESP. Raises ``MqttError`` when the connection is lost,
        ``TimeoutError`` when at the end a PINGREQ has waited longer than
        ``answer_within``. paho's own keepalive (the CONNECT's, which closes the
        connection on a late answer) is off meanwhile."""
        paho, lost = self._client, self._disconnected
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        # Never reached: paho's misc loop also ends a connection whose PINGREQ
        # waited a keepalive (0 would end it at its next tick).
        connect_keepalive, paho._keepalive = paho._keepalive, 2**31
        # [MQTT-3.2.2-21]: an MQTT 5 CONNACK's Server Keep Alive replaces the
        # client's own: pinged no less often, as the native driver does.
        if self.server_keepalive and not 0 < keepalive <= self.server_keepalive:
            keepalive = float(self.server_keepalive)
        try:
            while (left := end - loop.time()) > 0:
                wait = left
                if keepalive > 0:
                    due = paho._last_msg_out + keepalive - time.monotonic()  # paho's clock
                    wait = min(left, keepalive if paho._ping_t else max(0.0, due))
                await asyncio.wait((lost,), timeout=wait)
                if lost.done():
                    raise _lost(lost)
                idle = time.monotonic() - paho._last_msg_out
                if keepalive > 0 and not paho._ping_t and idle >= keepalive:
                    paho._send_pingreq()
                    # As paho's own keepalive does: its PINGREQ is not counted as
                    # sent, and the hold's end found 3.5 s of silence (a PINGREQ
                    # more than the native driver sends, just before DISCONNECT).
                    with paho._msgtime_mutex:
                        paho._last_msg_out = time.monotonic()
            if paho._ping_t and time.monotonic() - paho._ping_t > answer_within:
                raise TimeoutError
        finally:
            paho._keepalive = connect_keepalive

    async def unless_lost(self, operation: Awaitable[_T]) -> _T:
        """``operation`` (a publish or subscribe), or ``MqttError`` as soon as the
        connection is lost: aiomqtt leaves one waiting for its ack when the
        connection drops under it, and the step's timeout ended a reset as a
        ``timeout``."""
        task = asyncio.ensure_future(operation)
        lost = self._disconnected
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task.done():  # (one cancelled just now is not done yet)
            return task.result()
        raise _lost(lost)

    def _close(self) -> None:
        # Stops watching the socket (aiomqtt's callbacks), ends the misc task,
        # closes the socket; nothing when there is none.
        self._client._sock_close()


class AiomqttDevice(DeviceDriver):
    def _client(self) -> _Client:
        spec = self.spec
        v5 = spec.version == mqtt.MQTT_5
        client = _Client(
            spec.target.host,
            spec.target.port,
            identifier=spec.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=(
                _naming(spec.tls.context(), spec.tls.server_name) if spec.tls is not None else None
            ),
            keepalive=self.config.keepalive,
            timeout=self.config.connect_timeout,
            bind_address=spec.target.source_address or "",
            logger=_QUIET,
        )
        # paho bounds its TCP and TLS at 5 s of its own: a slow handshake failed
        # as a socket timeout inside the TLS code. The attempt's bound is ours.
        client._client.connect_timeout = self.config.connect_timeout
        return client

    async def run(self) -> DeviceResult:
        result, config = self.result, self.config
        result.lag = max(0.0, self.clock() - self.spec.scheduled)
        retry = RetryState(config, result, self.rng)
        while True:
            client = self._client()  # its files loaded, or the device failed preparing
            result.attempts += 1
            began = self.clock()
            where, trigger = "connack", True
            try:
                async with asyncio.timeout(config.connect_timeout):
                    await client.__aenter__()
            except TimeoutError:
                outcome, reason = Outcome.TIMEOUT, "no answer in time"
            except (aiomqtt.MqttError, OSError) as exc:
                cause = client.connect_error
                error = (
                    (_connect_error(cause) if cause is not None else None)
                    or client.lost_before_connack
                    or _translate(exc, self.spec.version, "connack")
                )
                outcome, reason, where = self.classify(error), error.reason, error.phase
                trigger = error.may_be_jitp_trigger
                if isinstance(cause, TimeoutError):
                    outcome, reason = Outcome.TIMEOUT, "no answer in time"
            except BaseException:
                client.abandon()
                raise
            else:
                result.endpoint_wait += self.clock() - began
                self.connected(self.clock() - self.spec.scheduled)
                await self._act(client)
                return result
            client.abandon()
            result.endpoint_wait += self.clock() - began
            delay = retry.failed(outcome, reason, where, trigger)
            if delay is None:
                return result
            await asyncio.sleep(delay)

    async def _act(self, client: _Client) -> None:
        result, timeout, version = self.result, self.config.step_timeout, self.spec.version
        phase = "publish"
        try:
            for step in self.spec.steps:
                if isinstance(step, PublishStep):
                    phase = self.step = "publish"
                    payload = bytes(step.payload_bytes)
                    for _ in range(step.count):
                        sent = self.clock()
                        client.puback_code = 0
                        async with asyncio.timeout(timeout):
                            await client.unless_lost(
                                client.publish(step.topic, payload, qos=step.qos, timeout=_OURS)
                            )
                        code = client.puback_code
                        if code >= 0x80:
                            name = reason_name(code, version)
                            raise AckRefused(f"PUBACK {name}", "publish", code, version)
                        result.publishes += 1
                        if step.qos == 1:
                            result.publish_acks.append(self.clock() - sent)
                elif isinstance(step, SubscribeStep):
                    phase = self.step = "subscribe"
                    async with asyncio.timeout(timeout):
                        codes = await client.unless_lost(
                            client.subscribe(step.topic_filter, qos=step.qos, timeout=_OURS)
                        )
                    # As the native driver: 0x80 in both versions, classified as MQTT 5's.
                    code = _code(codes[0]) if codes else 0x80
                    if code >= 0x80:
                        raise AckRefused(
                            f"SUBACK 0x{code:02x} for {step.topic_filter}", "subscribe", code, 5
                        )
                elif isinstance(step, HoldStep):
                    phase = self.step = "hold"
                    seconds = step.length(self.spec.origin, self.clock())
                    await client.hold(seconds, step.keepalive, timeout)
            result.outcome, result.reason, result.phase = Outcome.CONNECTED, None, None
        except TimeoutError:
            result.outcome, result.reason, result.phase = (
                Outcome.TIMEOUT,
                "no answer in time",
                phase,
            )
        except TransportError as exc:
            result.outcome, result.reason, result.phase = self.classify(exc), exc.reason, exc.phase
        except aiomqtt.MqttError as exc:
            error = _translate(exc, version, phase)
            result.outcome, result.reason, result.phase = self.classify(error), error.reason, phase
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
