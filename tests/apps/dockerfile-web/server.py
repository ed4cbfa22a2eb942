"""Answers GET with who it runs as, where, and what its process is."""

import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with open("/data/probe", "w") as f:  # the image's VOLUME is writable
            f.write("ok")
        body = f"hello from {os.environ['PC_PROCESS']} uid {os.getuid()} in {os.getcwd()}\n"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())


print("listening on", os.environ["PORT"], flush=True)
HTTPServer(("", int(os.environ["PORT"])), Hello).serve_forever()
