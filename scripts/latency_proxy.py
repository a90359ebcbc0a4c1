"""A TCP proxy that holds every request back by a fixed latency: a remote bucket, on loopback.

`bench_index.py` puts it in front of a local S3 server so that each request pays the round
trip a bucket in another region would, without the server spending CPU on it (a sleep inside
a Python server ties up one of its threads per request in flight). Bytes from a client reach
the upstream `latency` seconds after they arrived, in order, per connection; replies flow back
at once and are counted.

    python scripts/latency_proxy.py UPSTREAM_PORT   # prints the port it listens on
    stdin: "latency SECONDS"  sets the latency and resets the counter; prints the bytes relayed
           "bytes"            prints the bytes relayed back to clients since the last reset
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading


class Proxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.latency = 0.0
        self.relayed = 0  # reply bytes (headers and bodies) sent back to clients

    async def serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self._connection, sock=sock)
        async with server:
            await server.serve_forever()

    async def _connection(self, client_r, client_w) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._held_back(client_r, up_w), self._back(up_r, client_w), return_exceptions=True
        )

    async def _held_back(self, reader, writer) -> None:
        # Each chunk is stamped on arrival and sent when its time comes, so requests pipelined
        # on one connection each wait `latency`, not the sum of theirs.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def sender() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(sender())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((loop.time() + self.latency, data))
        finally:
            queue.put_nowait((0.0, None))
            await task

    async def _back(self, reader, writer) -> None:
        try:
            while data := await reader.read(1 << 20):
                self.relayed += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def main() -> int:
    proxy = Proxy(int(sys.argv[1]))
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print(sock.getsockname()[1], flush=True)

    def control() -> None:
        # Plain ints and floats shared with the loop's thread: each read or write is atomic.
        for line in sys.stdin:
            cmd, *arg = line.split()
            print(proxy.relayed, flush=True)
            if cmd == "latency":
                proxy.latency = float(arg[0])
                proxy.relayed = 0
        # stdin closed: the bench is done. Nothing to flush, and open connections need no
        # goodbye, so the process ends here rather than unwinding hundreds of tasks.
        os._exit(0)

    threading.Thread(target=control, daemon=True).start()
    asyncio.run(proxy.serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
