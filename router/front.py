"""The text of nginx.conf for the node's nginx front (see peoplescloud/front_process.py).

nginx serves the router's port. A request whose Host names an app with a ready
web instance on this node goes straight to that instance (the fast path). The
rest go to the Python router on a loopback port: unknown hosts (404), apps with
no local instance (503, or a sibling's router), ACME challenges, and requests a
sibling's router passed on (X-PC-Hop). It listens on a Unix socket in the run
dir that only nginx uses: there it reads the client's address from the end of
X-Forwarded-For (nginx appended it), or from X-PC-Front on what a sibling sent.
An app's upstream block ends with the Python router as `backup`: an instance
stopped since the last reload is answered by it (503 or another instance).

On the fast path nginx does what the Python router does: HTTP/1.1 and
keep-alive to the app, Upgrade passed through, Host as sent, X-Forwarded-For
extended, X-Forwarded-Proto/Host/Port set, the client's X-Request-Id kept when
sane (Heroku's rule), `Via`, no buffering of whole bodies, own 502/504 pages.
Its access log goes to the daemon as syslog datagrams, one per request, which
the daemon turns into the router's line in the app's log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from router import pages
from router.limits import RouterLimits

ROUTER = "pc_router"  # the upstream of the Python router
TAG = "pcfront"  # the syslog tag of access lines
# One access line: app|connect s|response s|the router's fields (see front_process.log_line).
LOG_FORMAT = (
    "$pc_app|$upstream_connect_time|$upstream_response_time|"
    'method=$request_method path="$pc_path" host=$http_host request_id=$pc_request_id '
    'fwd="$remote_addr" status=$status bytes=$body_bytes_sent'
)
KEEPALIVE = "    keepalive 64;\n    keepalive_requests 10000;\n"  # idle connections kept per worker
_NAME = re.compile(r"[a-z0-9.-]{1,253}")  # a host name nginx may take as a map key


@dataclass(frozen=True)
class Front:
    """What the config needs besides the routes."""

    listen: str
    port: int
    router: Path  # the Unix socket of the Python router (only the node's user may connect)
    work: Path  # the front's own directory (pid, temp dirs, error log)
    via: str  # "1.1 NODE"
    limits: RouterLimits
    logs: bool
    workers: int = 1
    user: str = ""  # the workers' user when nginx starts as root (they read the run dir)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def config(front: Front, routes: Mapping[str, tuple[list[str], list[str]]]) -> str:
    """nginx.conf for `routes`: app -> (its host names, its ready local instances'
    addresses). An app with no address is left to the Python router."""
    limits, work = front.limits, front.work
    router_re = re.escape(f"unix:{front.router}")
    upstreams, hosts, names = [], [], []
    for i, (app, (app_hosts, addresses)) in enumerate(sorted(routes.items())):
        if not addresses:
            continue
        servers = "".join(f"    server {a} max_fails=0;\n" for a in sorted(addresses))
        # Instances gone since the last reload: the Python router answers (503, or a sibling).
        servers += f"    server unix:{front.router} backup;\n"
        upstreams.append(f"upstream pc_app_{i} {{\n{servers}{KEEPALIVE}}}\n")
        for host in sorted({h.lower() for h in app_hosts}):
            if _NAME.fullmatch(host):
                hosts.append(f"    {host} pc_app_{i};\n")
                names.append(f"    {host} {app};\n")
    listen = f"[{front.listen}]" if ":" in front.listen else front.listen
    log = (
        f"access_log syslog:server=unix:{work / 'log.sock'},tag={TAG},nohostname pc if=$pc_log;"
        if front.logs
        else "access_log off;"
    )
    header_kb = max(1, limits.max_header_kb)
    return f"""# Written by the People's Cloud daemon; rewritten when routes change.
{f"user {front.user};" if front.user else ""}
worker_processes {front.workers};
daemon off;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {work / "tmp/body"};
  proxy_temp_path {work / "tmp/proxy"};
  fastcgi_temp_path {work / "tmp/fastcgi"};
  uwsgi_temp_path {work / "tmp/uwsgi"};
  scgi_temp_path {work / "tmp/scgi"};
  default_type text/plain;
  server_tokens off;
  access_log off;
  log_format pc '{LOG_FORMAT}';
  client_header_timeout {_ms(limits.header_timeout)};
  client_body_timeout {_ms(limits.idle_timeout)};
  keepalive_timeout {_ms(limits.idle_timeout)};
  keepalive_requests 10000;  # nginx's 1000 makes busy clients reconnect often
  send_timeout {_ms(limits.idle_timeout)};
  large_client_header_buffers 4 {header_kb}k;
  client_max_body_size {limits.max_body_mb}m;
  proxy_connect_timeout {_ms(limits.connect_timeout)};
  proxy_read_timeout {_ms(max(limits.first_byte_timeout, limits.idle_timeout))};
  proxy_send_timeout {_ms(limits.idle_timeout)};
  proxy_http_version 1.1;
  proxy_request_buffering off;
  proxy_buffering off;
  proxy_redirect off;
  proxy_next_upstream error;

upstream {ROUTER} {{
    server unix:{front.router};
{KEEPALIVE}}}
{"".join(upstreams)}
  map $host $pc_fast {{
    default {ROUTER};
{"".join(hosts)}  }}
  map $host $pc_app {{
    default "";
{"".join(names)}  }}
  # A request a sibling's router passed on is the Python router's to check,
  # and so are ACME challenges.
  map $http_x_pc_hop $pc_hop_up {{
    "" $pc_fast;
    default {ROUTER};
  }}
  map $request_uri $pc_up {{
    "~^/\\.well-known/acme-challenge/" {ROUTER};
    default $pc_hop_up;
  }}
  # From a client: nginx extends X-Forwarded-For (the Python router reads the
  # client from its end) and sets the rest. From a sibling's router (X-PC-Hop):
  # all pass unchanged, and X-PC-Front names the sender.
  map $http_x_pc_hop $pc_xff {{ "" $proxy_add_x_forwarded_for; default $http_x_forwarded_for; }}
  map $http_x_pc_hop $pc_proto {{ "" http; default $http_x_forwarded_proto; }}
  map $http_x_pc_hop $pc_fhost {{ "" $http_host; default $http_x_forwarded_host; }}
  map $http_x_pc_hop $pc_fport {{ "" {front.port}; default $http_x_forwarded_port; }}
  map $http_x_pc_hop $pc_rid {{ "" $pc_request_id; default $http_x_request_id; }}
  map $http_x_pc_hop $pc_front {{ "" ""; default $remote_addr; }}
  map $http_x_pc_hop $pc_xapp {{ "" ""; default $http_x_pc_app; }}
  # What the Python router answered it logs and marks with Via itself.
  map $upstream_addr $pc_log {{ "~{router_re}$" 0; "" 0; default 1; }}
  map $upstream_addr $pc_via {{ "~{router_re}$" ""; default "{front.via}"; }}
  map $http_upgrade $pc_connection {{
    "" "";
    default upgrade;
  }}
  # The client's X-Request-Id when sane (Heroku's rule), else nginx's.
  map $http_x_request_id $pc_request_id {{
    "~^[A-Za-z0-9+/=_.:-]{{20,200}}$" $http_x_request_id;
    default $request_id;
  }}
  map $request_uri $pc_path {{
    "~^(?<p>[^?]*)" $p;
  }}

  server {{
    listen {listen}:{front.port} backlog=1024;
    {log}
    error_page 502 @bad_gateway;
    error_page 504 @timeout;
    location / {{
      proxy_pass http://$pc_up;
      proxy_set_header Host $http_host;
      proxy_set_header Connection $pc_connection;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header X-Forwarded-For $pc_xff;
      proxy_set_header X-Forwarded-Proto $pc_proto;
      proxy_set_header X-Forwarded-Host $pc_fhost;
      proxy_set_header X-Forwarded-Port $pc_fport;
      proxy_set_header X-Request-Id $pc_rid;
      proxy_set_header X-PC-Front $pc_front;
      proxy_set_header X-PC-App $pc_xapp;
      proxy_pass_header Server;
      proxy_pass_header Date;
      add_header Via $pc_via always;
    }}
    location @bad_gateway {{
      return 502 "{pages.text_for(502, "$pc_app")}\\nrequest id: $pc_request_id\\n";
    }}
    location @timeout {{
      return 504 "{pages.text_for(504, "$pc_app")}\\nrequest id: $pc_request_id\\n";
    }}
  }}
}}
"""
