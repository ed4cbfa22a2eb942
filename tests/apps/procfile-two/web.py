"""A tiny web process: answers every GET with the name of the instance."""

import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server calls
        body = f"hello from {os.environ.get('PC_PROCESS', '?')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    print(f"listening on {port}", flush=True)
    HTTPServer(("0.0.0.0", port), Hello).serve_forever()
