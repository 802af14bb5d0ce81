#!/usr/bin/env python
"""Load test of `ignite-mnist serve`: requests/s and p50/p99 latency at 1, 16 and 64 concurrent clients.

Each client posts real digits (the bundled sample's test set, as PNG files) one after the other on its own
keep-alive connection, for --seconds per level after a short warm-up. The server runs in its own process
(started here from --release, or already running at --url); the clients share this one (asyncio).
Errors: any answer that is not a 200 with a label, and any failed request. The server's /health tells how
many images each forward pass took (dynamic batching). The last line is one JSON object.

    .venv/bin/python scripts/bench_serve.py --release experiments/sample/releases/release_epoch_10.onnx
"""

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def sample_pngs(n: int) -> list:
    """The first n digits of the bundled sample's test set, as PNG files (bytes)."""
    from PIL import Image

    from ignite_mnist import data

    images, _ = data.read_split(*data.locate("mnist-sample", Path("unused"))["test"])
    pngs = []
    for image in images[:n].numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    return pngs


def start_server(release: str, extra: list) -> tuple:
    process = subprocess.Popen([sys.executable, "-m", "ignite_mnist", "serve", "--release", release, "--port", "0",
                                *extra], stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    if " on http://" not in line:
        process.kill()
        sys.exit(f"error: the server did not start: {line.strip() or process.stderr.read().strip()}")
    return process, line.split(" on ")[1].split()[0].rstrip("/")


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Connection:
    """One keep-alive HTTP/1.1 connection that posts image files: a minimal client over asyncio streams, so
    that 64 clients in one Python process cost little next to the server they measure (httpx's pool, tried
    first, became the bottleneck at 64 connections)."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None

    async def post(self, path: str, body: bytes) -> tuple:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        content = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), content

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def level(url: str, pngs: list, clients: int, seconds: float, warmup: float) -> dict:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    latencies, errors = [], []
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + seconds

    async def one_client(k: int):
        connection, i = Connection(host, port), k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status, content = await connection.post("/predict", pngs[i % len(pngs)])
                reason = None if status == 200 and isinstance(json.loads(content).get("label"), int) else f"HTTP {status}"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                reason = type(e).__name__
                connection.close()
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop:
                latencies.append(t1 - t0)
                if reason:
                    errors.append(reason)
            i += clients
        connection.close()

    async def health_at(moment: float):
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.get(url + "/health")).json()

    health_task = asyncio.ensure_future(health_at(measure_from))
    await asyncio.gather(*(one_client(k) for k in range(clients)))
    before = await health_task
    after = await health_at(0)
    passes = after["forward_passes"] - before["forward_passes"]
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "images_per_forward_pass": round((after["images"] - before["images"]) / passes, 2) if passes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", help="start `ignite-mnist serve --release FILE` on a free port")
    source.add_argument("--url", help="a server already running, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels (default: 1,16,64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level (default: 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--digits", type=int, default=1000, help="distinct sample digits to post (default: 1000)")
    parser.add_argument("--max-batch", type=int, help="passed to serve")
    parser.add_argument("--max-wait-ms", type=float, help="passed to serve")
    args = parser.parse_args()

    pngs = sample_pngs(args.digits)
    process, url = None, args.url
    if args.release:
        extra = [*(["--max-batch", str(args.max_batch)] if args.max_batch else []),
                 *(["--max-wait-ms", str(args.max_wait_ms)] if args.max_wait_ms is not None else [])]
        process, url = start_server(args.release, extra)
    try:
        info = httpx.get(url + "/info", timeout=30).json()
        results = []
        print(f"{cpu_model()}, {os.cpu_count()} cores; {info['file_format']} release {info['file']}; "
              f"max_batch {info['server']['max_batch']}, max_wait_ms {info['server']['max_wait_ms']}")
        print(f"{'clients':>7} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'images/pass':>11}")
        for clients in (int(c) for c in args.clients.split(",")):
            r = asyncio.run(level(url, pngs, clients, args.seconds, args.warmup))
            results.append(r)
            print(f"{r['clients']:>7} {r['requests_per_s']:>11} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>6} "
                  f"{r['images_per_forward_pass']!s:>11}", flush=True)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "format": info["file_format"],
                      "release": info["file"], "server": info["server"], "seconds_per_level": args.seconds,
                      "levels": results}))


if __name__ == "__main__":
    main()
