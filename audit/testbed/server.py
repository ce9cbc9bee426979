"""A loopback HTTP server for a testbed's ``files/`` folder, so img2dataset's real download path
(urllib over HTTP) can run in tests and in the demo without any network.

Only ``GET``/``HEAD /files/<name>`` are served, from ``<testbed>/files/``; everything else (other
paths, directory listings, names with ``/`` or ``..``) is a 404, so ``truth.parquet`` and the
other planted answers are never reachable. Request logs are dropped (one line per image would
drown the real logs); errors are logged at debug level.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

FILES_PREFIX = "/files/"
# SimpleHTTPRequestHandler's own reason phrase for a missing file; urllib turns it into the
# error message img2dataset records ("HTTP Error 404: File not found").
NOT_FOUND_MESSAGE = "File not found"


class _FilesHandler(SimpleHTTPRequestHandler):
    """Serve ``/files/<name>`` from one folder; 404 for anything else."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
    }

    def _file(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        if not path.startswith(FILES_PREFIX):
            return None
        name = path[len(FILES_PREFIX) :]
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            return None
        f = Path(self.directory) / name
        return f if f.is_file() else None

    def send_head(self):  # type: ignore[no-untyped-def]
        f = self._file()
        if f is None:
            self.send_error(HTTPStatus.NOT_FOUND, NOT_FOUND_MESSAGE)
            return None
        self.path = FILES_PREFIX.rstrip("/") + "/" + f.name
        try:
            fh = open(f, "rb")  # noqa: SIM115 - closed by SimpleHTTPRequestHandler.copyfile
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, NOT_FOUND_MESSAGE)
            return None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-type", self.guess_type(str(f)))
        self.send_header("Content-Length", str(f.stat().st_size))
        self.end_headers()
        return fh

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def log_error(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        logger.debug("testbed server: " + format, *args)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # a client that hangs up mid-transfer is not our error; keep the console quiet
        logger.debug("testbed server: error serving %s", client_address, exc_info=True)


@contextmanager
def serve_testbed(testbed_dir: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``testbed_dir/files`` on ``host`` (loopback only) at an ephemeral port.

    Yields the base URL (``http://127.0.0.1:PORT``); pass it to
    :func:`audit.testbed.generate.write_url_list` to get a url list img2dataset can download.
    The server is shut down and its socket closed on exit.
    """
    files = Path(testbed_dir) / "files"
    if not files.is_dir():
        raise FileNotFoundError(f"{files} does not exist: is {testbed_dir} a testbed folder?")
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the testbed server binds to loopback only (got host {host!r})")

    def handler(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _FilesHandler(*args, directory=str(files), **kwargs)

    server = _QuietServer((host, 0), handler)
    port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever,
        name=f"testbed-http-{port}",
        kwargs={"poll_interval": 0.1},
        daemon=True,
    )
    thread.start()
    base_url = f"http://{host}:{port}"
    logger.debug("serving %s at %s", files, base_url)
    try:
        yield base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
