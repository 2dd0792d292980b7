"""asyncio adapters that carry the sans-I/O MQTT client over TCP and TLS, timing
each phase: TCP connected, TLS handshake done, CONNECT sent, CONNACK, PUBACKs."""
