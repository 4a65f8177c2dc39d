"""nginx in front of the webserver, with the IIS rule's semantics (the path is forwarded unchanged).

Two files: `dagster.conf`, a server block for /etc/nginx/sites-enabled (Linux deployments), and
`nginx.conf`, a self-contained main config that includes it, for running nginx from any folder
without touching /etc/nginx: `nginx -p DIR -c nginx.conf -e error.log -g 'daemon off;'`.
The tests put this nginx in front of a real dagster-webserver.
"""

from __future__ import annotations

import re

from dagpg.render.errors import RenderError
from dagpg.render.layout import Layout

MARKER = "Rendered by `dagpg render nginx`"
PROXY_TIMEOUT_S = 600  # as ARR's timeout: the UI's WebSocket and long GraphQL queries

_PROXY_SETTINGS = """\
    # As IIS/ARR in web.config: forwarded headers, WebSocket upgrade, no response buffering.
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_buffering off;
    proxy_read_timeout {timeout}s;
    proxy_send_timeout {timeout}s;
"""


def _locations(layout: Layout, strip_prefix: bool) -> str:
    backend, prefix = layout.backend, layout.path_prefix
    if not prefix:
        return f"""    location / {{
        proxy_pass {backend};
    }}
"""
    # Outside the prefix nothing is served (as on an IIS site without other applications);
    # put other applications' locations here.
    elsewhere = """    location / {
        return 404;
    }
"""
    if strip_prefix:
        # The guide's IIS rule, ^dagster(?:/(.*))?$ -> http://localhost:3000/{R:1}: the prefix
        # is cut off before the request reaches the webserver.
        return f"""    location ~ ^{re.escape(prefix)}(?:/(.*))?$ {{
        proxy_pass {backend}/$1$is_args$args;
    }}
{elsewhere}"""
    # ^dagster(/.*)?$ -> http://127.0.0.1:3000/dagster{R:1} is the identity on the path; a
    # proxy_pass without a URI forwards the request line exactly as the browser sent it.
    return f"""    location = {prefix} {{
        proxy_pass {backend};
    }}
    location ^~ {prefix}/ {{
        proxy_pass {backend};
    }}
{elsewhere}"""


def render_server_block(layout: Layout, *, listen: str = "80", server_name: str = "_",
                        strip_prefix: bool = False) -> bytes:
    if not re.fullmatch(r"(\[?[0-9A-Za-z.:]+\]?:)?[0-9]{1,5}", listen):
        raise RenderError(f"--listen {listen!r}: write a port (8080) or address:port "
                          "(127.0.0.1:8080)")
    if not re.fullmatch(r"[A-Za-z0-9_.*~ -]+", server_name):
        raise RenderError(f"--server-name {server_name!r}: write host names separated by spaces")
    where = f"under {layout.path_prefix}" if layout.path_prefix else "at the root"
    rule = "the guide's prefix-stripping rule (broken)" if strip_prefix else "path unchanged"
    text = f"""# {MARKER} from config/config.yml: Dagster {where}, {rule}.
# Include in nginx's http {{}} context (e.g. /etc/nginx/sites-enabled/dagster.conf).
map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
}}

server {{
    listen {listen};
    server_name {server_name};
{_PROXY_SETTINGS.format(timeout=PROXY_TIMEOUT_S)}
{_locations(layout, strip_prefix)}}}
"""
    return text.encode("utf-8")


def render_main_config() -> bytes:
    text = f"""# {MARKER}: a self-contained nginx that serves dagster.conf (beside this file), using
# only this folder. Run it in the foreground with:
#   nginx -p "$PWD" -c nginx.conf -e error.log -g 'daemon off;'
worker_processes 1;
pid nginx.pid;
error_log error.log;

events {{
    worker_connections 256;
}}

http {{
    access_log access.log;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    include dagster.conf;
}}
"""
    return text.encode("utf-8")
