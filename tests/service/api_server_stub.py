"""What every loopback stand-in for the Kubernetes API server in these tests shares: JSON replies, `Status`
bodies and request bodies as the real API server speaks them. No API server can run in CI, so the real
`kubernetes` client talks to these instead."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class ApiServerStubHandler(BaseHTTPRequestHandler):
    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _status(self, code: int, reason: str) -> None:
        self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code})

    def log_message(self, *args) -> None:
        pass
