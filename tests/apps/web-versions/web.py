"""A web app that says which version of it answers (and its GREETING config
var); /health answers what the file `health` holds."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "one"
HERE = Path(__file__).parent


class Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server calls
        if self.path == "/health":
            text = (HERE / "health").read_text().strip()
        else:
            text = f"{VERSION} {os.environ.get('GREETING', '-')} {os.environ['PC_PROCESS']}"
        body = f"{text}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # one line a request would flood the log at 50 requests a second


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    print(f"{VERSION} listening on {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Answers).serve_forever()
