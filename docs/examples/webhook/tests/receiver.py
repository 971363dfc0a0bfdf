"""A webhook endpoint for the tests: appends each POST to a JSON-lines file, then
answers 204 (404 for topics starting with "unroutable"). It exits when its stdin closes.

    python receiver.py PORT FILE     # prints "ready PORT" once it listens on 127.0.0.1
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

HEADER_PREFIX = "Message-Header-"
_written = threading.Lock()


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the connector posts a batch on one connection

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        topic = unquote(self.path.rsplit("/", 1)[-1])
        if topic.startswith("unroutable"):
            self._answer(404)
            return
        key = self.headers.get("Message-Key")
        record = {
            "topic": topic,
            "message_id": self.headers.get("Message-Id"),
            "key": None if key is None else unquote(key),
            "content_type": self.headers.get("Content-Type"),
            "headers": {
                name[len(HEADER_PREFIX) :]: unquote(value)
                for name, value in self.headers.items()
                if name.startswith(HEADER_PREFIX)
            },
            "body": base64.b64encode(body).decode(),
        }
        with _written, open(sys.argv[2], "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self._answer(204)  # only once it is written: a 2xx means delivered

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the file


def exit_with_the_parent() -> None:
    """The test holds our stdin open; EOF means it is gone, even if killed outright."""
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Recorder)
    threading.Thread(target=exit_with_the_parent, daemon=True).start()
    print("ready", server.server_port, flush=True)  # PORT 0: the one the system chose
    server.serve_forever()
