"""nginx in front of the webserver, with the IIS rule's semantics (the path is forwarded unchanged).

Two files: `dagster.conf`, a server block for /etc/nginx/sites-enabled (Linux deployments), and
`nginx.conf`, a self-contained main config that includes it, for running nginx from any folder
without touching /etc/nginx: `nginx -p DIR -c nginx.conf -e error.log -g 'daemon off;'`.
The tests put this nginx in front of a real dagster-webserver.
"""

from __future__ import annotations

import re

from dagpg.render.access import checked_htpasswd
from dagpg.render.errors import RenderError
from dagpg.render.layout import Layout

MARKER = "Rendered by `dagpg render nginx`"
PROXY_TIMEOUT_S = 600  # as ARR's timeout: the UI's WebSocket and long GraphQL queries

# The password file is named, never rendered: `htpasswd` (apache2-utils) or `openssl passwd
# -apr1` writes it. Who may use which path is decided after the password is checked.
AUTH = """\
    auth_basic "Dagster";
    auth_basic_user_file {file};
"""

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
    if layout.access is not None:
        return _guarded_locations(layout)
    backend, prefix = layout.backend, layout.path_prefix
    if not prefix:
        return f"""    location / {{
        proxy_pass {backend};
    }}
"""
    if strip_prefix:
        # The guide's IIS rule, ^dagster(?:/(.*))?$ -> http://localhost:3000/{R:1}: the prefix
        # is cut off before the request reaches the webserver.
        return f"""    location ~ ^{re.escape(prefix)}(?:/(.*))?$ {{
        proxy_pass {backend}/$1$is_args$args;
    }}
{_ELSEWHERE}"""
    return _prefix_locations(prefix, backend, "") + _ELSEWHERE


# Outside the prefixes nothing is served (as on an IIS site without other applications);
# put other applications' locations here.
_ELSEWHERE = """    location / {
        return 404;
    }
"""


def _prefix_locations(prefix: str, backend: str, guard: str) -> str:
    # ^dagster(/.*)?$ -> http://127.0.0.1:3000/dagster{R:1} is the identity on the path; a
    # proxy_pass without a URI forwards the request line exactly as the browser sent it.
    return "".join(f"""    location {match} {{
{guard}        proxy_pass {backend};
    }}
""" for match in (f"= {prefix}", f"^~ {prefix}/"))


def _guarded_locations(layout: Layout) -> str:
    """Basic authentication on both paths; then an auth_request subrequest lets only the
    audience's users through (403 for the others). auth_basic runs before auth_request in
    nginx's access phase, so an anonymous request gets 401 (the browser asks for a login)."""
    out = []
    for web in layout.webservers:
        gate = f"/{GATE}-{web.audience}"
        guard = f"        auth_request {gate};\n"
        out.append(_prefix_locations(web.prefix, web.backend, guard))
        out.append(f"""    location = {gate} {{
        internal;
        if (${_map_name(web.audience)} = 0) {{
            return 403;
        }}
        return 204;
    }}
""")
    return "".join(out) + _ELSEWHERE


GATE = "_dagpg_access"


def _map_name(audience: str) -> str:
    return f"dagpg_{audience}"


def _access_maps(layout: Layout) -> str:
    """`map $remote_user` per audience: 1 for its users (viewers: viewers and operators)."""
    access = layout.access
    assert access is not None
    members = {"viewers": access.may_view().users, "operators": access.operators.users}
    out = []
    for web in layout.webservers:
        lines = "".join(f"    {_map_key(name)} 1;\n" for name in members[web.audience])
        out.append(f"map $remote_user ${_map_name(web.audience)} {{\n    default 0;\n{lines}}}\n")
    return "".join(out)


def render_server_block(layout: Layout, *, listen: str = "80", server_name: str = "_",
                        strip_prefix: bool = False) -> bytes:
    if not re.fullmatch(r"(\[?[0-9A-Za-z.:]+\]?:)?[0-9]{1,5}", listen):
        raise RenderError(f"--listen {listen!r}: write a port (8080) or address:port "
                          "(127.0.0.1:8080)")
    if not re.fullmatch(r"[A-Za-z0-9_.*~ -]+", server_name):
        raise RenderError(f"--server-name {server_name!r}: write host names separated by spaces")
    where = f"under {layout.path_prefix}" if layout.path_prefix else "at the root"
    rule = "the guide's prefix-stripping rule (broken)" if strip_prefix else "path unchanged"
    auth, maps = "", ""
    if layout.access is not None:
        htpasswd = checked_htpasswd(layout.access, _where(layout))
        where = " and ".join(f"{w.audience} under {w.prefix}" for w in layout.webservers)
        auth = AUTH.format(file=_quote(str(htpasswd)))
        maps = _access_maps(layout)
    text = f"""# {MARKER} from config/config.yml: Dagster {where}, {rule}.
# Include in nginx's http {{}} context (e.g. /etc/nginx/sites-enabled/dagster.conf).
map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
}}
{maps}
server {{
    listen {listen};
    server_name {server_name};
{_PROXY_SETTINGS.format(timeout=PROXY_TIMEOUT_S)}{auth}
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


def _where(layout: Layout) -> str:
    path = layout.settings.path
    return f"{path}: " if path else ""


def _quote(value: str) -> str:
    if any(c in value for c in '"\\;{}\n'):
        raise RenderError(f"dagpg.access.htpasswd: {value!r} holds a quote, backslash, ; or brace "
                          "nginx would misread; move the file to a plain path")
    return f'"{value}"'


def _map_key(name: str) -> str:
    """A literal map key: quoted, backslashes doubled, and a leading backslash where nginx
    would otherwise read a regex (~) or a special parameter (nginx.org, ngx_http_map_module)."""
    escaped = name.replace("\\", "\\\\")
    if name.startswith("~") or name in ("default", "hostnames", "include", "volatile"):
        escaped = "\\" + escaped
    return f'"{escaped}"'
