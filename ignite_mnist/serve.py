"""`ignite-mnist serve`: a release behind an HTTP API (Starlette on uvicorn), and a draw-a-digit page.

- POST /predict: an image file as the body -> {label, class, probability, probabilities}; a multipart
  upload of `file` fields -> a list of those. The image goes through data.image_as_digit, as in `predict`.
- GET /health, GET /info (the release's metadata), GET / (the page, ignite_mnist/static/index.html).

Concurrent requests are batched (Batcher): one worker takes what is queued, waits a few ms for more, up
to a batch limit, and runs one forward pass in a thread, so the event loop keeps taking requests. Bad
input is a 400 with a JSON error, a body over the limit a 413; neither reaches the model.
"""

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy  # noqa: F401  (before torch: see lazy_imports)
import torch
from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ignite_mnist import data
from ignite_mnist.errors import UserError
from ignite_mnist.experiment import log
from ignite_mnist.release import LoadedRelease, answer, open_release

MAX_BODY = 1_000_000  # bytes of a request body (413 above)
MAX_PIXELS = 25_000_000  # of one image, checked before it is decoded (400 above: a decompression bomb)
MAX_FILES = 64  # files in one multipart upload
MAX_BATCH = 64  # images in one forward pass
MAX_WAIT_MS = 2.0  # how long the first request of a batch waits for others
BODY_TIMEOUT = 30.0  # seconds for a request's whole body to come (408 after)


class Batcher:
    """Dynamic batching: requests queue up; one worker gathers them into one forward pass.

    The worker takes the first queued request, then whatever else arrives within `max_wait` seconds, up to
    `max_batch` images, and runs the model on all of them at once in its own thread. `batch_sizes` records
    the number of images of every forward pass (the most recent 10,000), for /health and the tests.
    """

    def __init__(self, release: LoadedRelease, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT_MS / 1000):
        self.release, self.max_batch, self.max_wait = release, max_batch, max_wait
        self.batch_sizes = collections.deque(maxlen=10_000)
        self.forward_passes = self.images = 0
        self._queue = None
        self._carried = None  # a request that did not fit in the last batch: it starts the next one
        self._task = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def log_probabilities(self, digits: torch.Tensor) -> torch.Tensor:
        """uint8 digits [k, 28, 28] -> their log-probabilities [k, 10], computed in shared forward passes of at most
        max_batch images (a request of more is cut into parts: the bound holds for the memory it is set for)."""
        loop = asyncio.get_running_loop()
        futures = []
        for part in digits.split(self.max_batch):
            futures.append(loop.create_future())
            await self._queue.put((part, futures[-1]))
        parts = await asyncio.gather(*futures, return_exceptions=True)  # (every part's answer taken, failed or not)
        failed = next((part for part in parts if isinstance(part, BaseException)), None)
        if failed is not None:
            raise failed
        return torch.cat(parts)

    def _forward(self, digits: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(digits))
        self.forward_passes += 1
        self.images += len(digits)
        return self.release.log_probabilities_of(digits)

    async def _gather(self) -> list:
        """The next batch: [(digits, future)], at least one part of a request, at most max_batch images."""
        loop = asyncio.get_running_loop()
        first, self._carried = self._carried or await self._queue.get(), None
        batch, size = [first], len(first[0])
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(item[0]) > self.max_batch:
                self._carried = item
                break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(digits, future) for digits, future in await self._gather() if not future.done()]
            if not batch:  # every client of this batch went away
                continue
            try:
                output = await loop.run_in_executor(self._executor, self._forward, torch.cat([d for d, _ in batch]))
                answers = output.split([len(d) for d, _ in batch])  # (the rows' count: checked by the release)
            except Exception as e:  # the model failed: each waiting request answers 500, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (digits, future), rows in zip(batch, answers):
                if not future.done():
                    future.set_result(rows)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole body, or HTTPException 413 as soon as it is known to be over `limit` bytes, 408 where it has not
    all come within `timeout` seconds (a stalled upload would hold its connection for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise HTTPException(413, f"the body is {int(declared)} bytes, over the limit of {limit} bytes")
    chunks, size = [], 0

    async def read():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except ClientDisconnect:  # the client's doing, not an internal error to log with a traceback
        raise HTTPException(400, "the client disconnected before the body was whole") from None
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the body did not all come within {timeout:g} s ({size} bytes came)") from None
    return b"".join(chunks)


class _ShutdownNotes(logging.Filter):
    """uvicorn's words on a stop that cuts requests off (a stalled upload, past the 5 s of grace): one line of ours,
    not its error and the traceback of each request cancelled."""

    def filter(self, record) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        if record.msg == "Cancel %s running task(s), timeout graceful shutdown exceeded":
            log.warning(f"stopping: {record.args[0]} request(s) still under way after 5 s cut off")
            return False
        return True


async def _uploads(request: Request, body: bytes, max_files: int) -> list:
    """[(name, bytes)] of the `file` fields of a multipart body (already read, within the size limit)."""
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")  # as Starlette
    if boundary and b"--" + boundary + b"--" not in body:  # python-multipart reads a cut body as no fields at all
        raise HTTPException(400, "malformed multipart upload: it does not end with its closing boundary (cut short?)")

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=max_files, max_fields=max_files) as form:
            fields = form.multi_items()
            files = [(" ".join((value.filename or "").split())[:100] or f"file {i + 1}", await value.read())
                     for i, (key, value) in enumerate(fields) if key == "file" and not isinstance(value, str)]
    except HTTPException as e:  # what Starlette makes of python-multipart's errors
        raise HTTPException(e.status_code, f"malformed multipart upload: {e.detail}") from None
    if any(key == "file" and isinstance(value, str) for key, value in fields):
        raise HTTPException(400, "each `file` field must be a file, not text")
    if not files:
        raise HTTPException(400, "the multipart upload has no `file` field: send images as `file` fields")
    return files


# Images decoded at once, whatever the number of requests: each holds its whole decoded image for a moment
# (100 MB for 25 megapixels in RGBA), and more decoding threads than cores would not finish sooner.
DECODING = threading.BoundedSemaphore(min(4, os.cpu_count() or 1))


def _decode(uploads: list, max_pixels: int, digits_release: bool = True) -> tuple:
    """(uint8 digits [k, 28, 28] of the uploads that are images, by the preprocessing of `predict`; {index: why}
    of those that are not). None of them an image: the first one's UserError."""
    digits, errors = {}, {}
    for i, (name, content) in enumerate(uploads):
        try:
            if not content:
                raise UserError(f"{name} is empty: send an image file (PNG, JPEG, ...)")
            with DECODING:
                digits[i] = data.image_as_digit(content, name=name, max_pixels=max_pixels, digits=digits_release)
        except UserError as e:
            errors[i] = e
    if not digits:
        raise errors[0]
    return torch.stack(list(digits.values())), {i: str(e) for i, e in errors.items()}


def create_app(release: LoadedRelease, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
               max_body: int = MAX_BODY, max_pixels: int = MAX_PIXELS, max_files: int = MAX_FILES,
               body_timeout: float = BODY_TIMEOUT) -> Starlette:
    """The ASGI app serving `release`; app.state.batcher is its Batcher."""
    batcher = Batcher(release, max_batch, max_wait_ms / 1000)
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # a malformed upload is the client's 400, not a log line
    page = resources.files("ignite_mnist").joinpath("static/index.html").read_text(encoding="utf-8")
    started = time.time()
    info = {**release.meta, "file": release.path.name, "file_format": release.file_format,  # (not where it lies)
            "server": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_body_bytes": max_body,
                       "max_pixels": max_pixels, "max_files": max_files}}

    async def predict(request: Request):
        body = await _read_body(request, max_body, body_timeout)
        many = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        if many:
            uploads = await _uploads(request, body, max_files)
        elif not body:
            return _error(400, "the body is empty: send the image file (PNG, JPEG, ...) as the request body")
        else:
            uploads = [("the body", body)]
        try:
            digits, errors = await run_in_threadpool(_decode, uploads, max_pixels, release.of_digits)
        except UserError as e:
            return _error(400, str(e))
        except MemoryError:  # the server's trouble, not the request's: it may well pass later
            log.error("out of memory while decoding an image")
            return _error(503, "the server has not the memory to decode that image now: try again later")
        try:
            log_probabilities = await batcher.log_probabilities(digits)
        except UserError as e:  # the release answers NaN: it is corrupt, and says so
            log.error(str(e))
            return _error(500, str(e))
        except Exception as e:  # the model failed (answered here: an unhandled error would close the connection)
            log.error(f"forward pass failed: {type(e).__name__}: {e}")
            return _error(500, f"internal error ({type(e).__name__})")
        results = iter(answer(release, log_probabilities, digits))
        if not many:
            return JSONResponse(next(results))
        # a file that is not an image is answered in its place, as `predict` does; the others are classified
        return JSONResponse([{"file": uploads[i][0], "error": errors[i]} if i in errors else next(results)
                             for i in range(len(uploads))])

    async def health(request: Request):
        sizes = list(batcher.batch_sizes)
        return JSONResponse({"status": "ok", "uptime_seconds": round(time.time() - started, 3),
                             "forward_passes": batcher.forward_passes, "images": batcher.images,
                             "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else None,
                             "largest_batch": max(sizes, default=None)})

    async def get_info(request: Request):
        return JSONResponse(info)

    async def index(request: Request):
        return HTMLResponse(page)

    async def http_error(request: Request, exc: HTTPException):
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # Starlette's 405 names the allowed methods (Allow)
        return response

    async def server_error(request: Request, exc: Exception):
        log.error(f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}")
        return _error(500, f"internal error ({type(exc).__name__})")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[Route("/", index), Route("/predict", predict, methods=["POST"]), Route("/health", health),
                Route("/info", get_info), Route("/favicon.ico", lambda request: Response(status_code=204))],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), or a one-line UserError.

    It listens before uvicorn starts: a client that connects as soon as the "serving ... on" line appears
    waits in the backlog instead of being refused while the event loop starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        raise UserError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()  # uvicorn listens again with its own backlog
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(release_path: Path, host: str = "127.0.0.1", port: int = 8000, max_batch: int = MAX_BATCH,
          max_wait_ms: float = MAX_WAIT_MS, max_body: int = MAX_BODY, threads: int = None) -> None:
    """Load the release, bind, and serve until Ctrl-C or SIGTERM."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {port}")
    # torch's forward pass leaves a core to the event loop: on 2 cores, a second torch thread competing with
    # it stalled requests (pt2: p99 60 ms instead of 7 at 1 client, 90 instead of 1,260 requests/s at 16)
    release = open_release(release_path, threads=threads or max(1, (os.cpu_count() or 2) - 1))
    app = create_app(release, max_batch, max_wait_ms, max_body)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info(f"serving {release.file_format} release {release_path} (epoch {release.meta.get('epoch')}, "
             f"{release.meta.get('dataset')}) on http://{shown}:{bound_port}/ (Ctrl-C to stop)")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    logging.getLogger("uvicorn.error").addFilter(_ShutdownNotes())  # (where uvicorn's server logs both)
    # SIGINT and SIGTERM are the normal way to stop a server: uvicorn shuts down gracefully (answering the
    # requests under way), then raises the signal again, which these handlers absorb: exit status 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: None)
    uvicorn.Server(config).run(sockets=[sock])
    log.info("stopped")
