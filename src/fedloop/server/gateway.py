"""HQ's public door: nginx in front of the SuperLink, forwarding the Fleet API and nothing else.

In flwr 1.41 the SuperLink serves its Fleet, Control and Runtime APIs on one HTTP
port, and its only Control API authentication (`flwr login`) needs Flower's
enterprise license plugin: without it, whoever reaches the port can list runs,
register SuperNodes and start a ServerApp as HQ. So `fedloop hq up` binds the
SuperLink to HQ's loopback and puts nginx (Debian's package) on the public
address: TLS with the SuperLink's certificate, `/v1/fleet/*` proxied to the
SuperLink (checked against the CA under the name localhost; the SuperLink's
SuperNode authentication still decides which nodes get in), every other path
answered 403. HQ's operators reach the Control API on the loopback port, from
HQ's own host: an operator login there is the credential.

What an outsider can still cost HQ is bounded here, before the SuperLink (which
parses a whole body before it authenticates the node): a body may be at most
the largest message fedloop sends (one array chunk of Flower's object store
plus its framing), read in full into nginx's memory before anything is
forwarded, so an over-sized one gets 413 without reaching the SuperLink; each client address
may hold `MAX_CONNECTIONS` connections and make `REQUESTS_PER_S` requests a
second (bursts of `REQUEST_BURST`), beyond which it gets 429; slow headers and
bodies are cut after `CLIENT_TIMEOUT`.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fedloop.shared.files import write_atomic
from fedloop.shared.flower_processes import DeploymentError

FLEET_PREFIX = "/v1/fleet/"
FRAMING_BYTES = 64 * 1024  # a push-object request around its chunk: node, run and object ids, protobuf headers
MAX_CONNECTIONS = 64  # per client address (tenants behind one NAT share it)
REQUESTS_PER_S = 100  # per client address; a tenant pushes a 646 MB adapter as ~130 chunk requests
REQUEST_BURST = 1000
CLIENT_TIMEOUT = "30s"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # nginx's temporary paths, all under HQ's home


def max_body_bytes() -> int:
    """The largest request body the gateway forwards: Flower's array chunk size plus the request's framing.

    fedloop's sealed adapters travel as one Array, which Flower pushes chunk by chunk
    (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`, 5 MiB by default); every other message is far smaller.
    """
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    return FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE + FRAMING_BYTES


def nginx_executable() -> str:
    """nginx from PATH, or the copy `make install` unpacks into the virtual environment (Debian's package)."""
    bundled = Path(sys.prefix) / "nginx" / "usr" / "sbin" / "nginx"
    found = shutil.which("nginx") or (str(bundled) if bundled.exists() else None)
    if found is None:
        raise DeploymentError(
            "nginx not found: `make install` unpacks Debian's nginx package into .venv/nginx, "
            "or install it (`apt-get install nginx`)"
        )
    return found


@dataclass(frozen=True)
class GatewaySpec:
    """Where the public Fleet door listens, which certificate it shows, and the SuperLink it forwards to."""

    home: Path
    host: str
    port: int
    certificate: Path
    private_key: Path
    ca_certificate: Path
    superlink_port: int

    @property
    def directory(self) -> Path:
        """nginx's configuration, pid file, temporary files and logs (under HQ's home)."""
        return self.home / "gateway"

    def config(self) -> str:
        """The nginx configuration: Fleet API forwarded over TLS, everything else refused."""
        d = self.directory.resolve()
        temp = "\n".join(f"    {kind}_temp_path {d / 'tmp' / kind};" for kind in TEMP_KINDS)
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 1;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
{temp}
    access_log {d / "access.log"};
    server_tokens off;
    limit_conn_zone $binary_remote_addr zone=per_address:10m;
    limit_req_zone $binary_remote_addr zone=requests:10m rate={REQUESTS_PER_S}r/s;
    limit_conn_status 429;
    limit_req_status 429;
    client_header_timeout {CLIENT_TIMEOUT};
    client_body_timeout {CLIENT_TIMEOUT};
    upstream superlink {{ server 127.0.0.1:{self.superlink_port}; keepalive 16; }}
    server {{
        listen {self.host}:{self.port} ssl;
        ssl_certificate {self.certificate.resolve()};
        ssl_certificate_key {self.private_key.resolve()};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size {max_body_bytes()};
        client_body_buffer_size {max_body_bytes()};  # read into memory: no temporary file for the worker to write
        limit_conn per_address {MAX_CONNECTIONS};
        limit_req zone=requests burst={REQUEST_BURST} nodelay;
        location {FLEET_PREFIX} {{
            proxy_pass https://superlink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {self.ca_certificate.resolve()};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name off;
            proxy_request_buffering on;  # the whole body is checked before a byte reaches the SuperLink
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
        location / {{
            default_type application/json;
            return 403 '{{"detail": "only the Fleet API is served here; HQ operators use the Control API at HQ"}}';
        }}
    }}
}}
"""

    def command(self) -> list[str]:
        """Write the configuration and return the nginx command line (foreground, so fedloop supervises it)."""
        missing = [str(p) for p in (self.certificate, self.private_key, self.ca_certificate) if not p.is_file()]
        if missing:
            raise DeploymentError(f"missing {', '.join(missing)}: create them with `fedloop certs` or bring your own")
        for kind in TEMP_KINDS:
            (self.directory / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        path = self.directory / "nginx.conf"
        write_atomic(path, self.config().encode())
        return [
            nginx_executable(),
            "-c",
            str(path.resolve()),
            "-p",
            str(self.directory.resolve()),
            "-e",
            str((self.directory / "error.log").resolve()),
            "-g",
            "daemon off;",
        ]
