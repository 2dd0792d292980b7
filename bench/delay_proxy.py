"""A TCP proxy that delays every chunk by a fixed time each way: a stand-in for a
network round trip when the kernel has no netem.

    python -m bench.delay_proxy --listen PORT --upstream PORT --delay 0.025 --seconds 600
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            if delay:
                loop.call_later(delay, writer.write, data)
            else:
                writer.write(data)
    except ConnectionError:
        pass
    if delay:
        await asyncio.sleep(delay)
    writer.close()


async def serve(listen: int, upstream: int, delay: float, seconds: float) -> None:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

    server = await asyncio.start_server(on_client, "127.0.0.1", listen, backlog=4096)
    async with server:
        await asyncio.sleep(seconds)  # bounded: the proxy stops by itself


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.025, help="seconds, each way")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.upstream, args.delay, args.seconds))


if __name__ == "__main__":
    main()
