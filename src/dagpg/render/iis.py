"""IIS in front of the webservers: web.config (URL Rewrite + ARR, Windows authentication, URL
Authorization). The appcmd script that installs it is `iis_script.py`.

The rule forwards the path unchanged. With `--path-prefix /dagster`, Dagster 1.13 mounts every
route under /dagster (unprefixed paths answer 404, `/` redirects to the prefix), so the proxy
must keep the prefix: `^dagster(/.*)?$` -> `http://127.0.0.1:3000/dagster{R:1}`. The guide's
rule strips it (`^dagster(?:/(.*))?$` -> `http://localhost:3000/{R:1}`); that sends
`/dagster/` to the webserver's `/`, which redirects back to `/dagster`: a redirect loop
(tests/test_proxy.py measures both through a real proxy). `localhost` may also resolve to ::1
while the webserver listens on 127.0.0.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from dagpg.render.access import OPERATORS, Webserver
from dagpg.render.layout import Layout
from dagpg.settings import Principals

RULE_NAME = "Dagster Reverse Proxy"
MARKER = "Rendered by `dagpg render iis`"
# ARR: long GraphQL queries and the UI's WebSocket outlive a short proxy timeout.
PROXY_TIMEOUT = "00:10:00"
# Browsers offer permessage-deflate and uvicorn accepts it, but ARR 3 forwards WebSockets through
# websocket.dll, which supports no extension: compressed frames break the connection right after
# the upgrade (python-websockets/websockets#1192, "ARR3.0 doesn't support WebSocket
# compression"; dotnet/aspnetcore#58846 removes the same header from IIS's own forwarder for this
# reason; open-webui/open-webui#24579: IIS 10 + ARR 3 + uvicorn). Blanking the request header
# removes it, so uvicorn never negotiates compression (the "remove the header when the request
# comes in" technique of Microsoft's IIS support blog, "IIS acting as reverse proxy: Where the
# problems start", for Accept-Encoding).
WEBSOCKET_EXTENSIONS = "HTTP_SEC_WEBSOCKET_EXTENSIONS"
SERVER_VARIABLES = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", WEBSOCKET_EXTENSIONS)


@dataclass(frozen=True)
class ProxyRule:
    """A URL Rewrite rule: `pattern` matches the path without its leading slash (IIS does that);
    `target` is the rewrite URL, `{R:1}` being the pattern's first group."""

    pattern: str
    target: str
    prefix: str

    def backend_url(self, path_and_query: str) -> str | None:
        """Where IIS sends a request for `path_and_query` (appendQueryString), None if the rule
        does not match. Case-insensitive, like IIS's default ignoreCase."""
        path, sep, query = path_and_query.partition("?")
        match = re.match(self.pattern, path.lstrip("/"), flags=re.IGNORECASE)
        if not match:
            return None
        url = self.target.replace("{R:1}", match.group(1) or "")
        return url + (sep + query if query else "")


def proxy_rule(layout: Layout, *, strip_prefix: bool = False,
               web: Webserver | None = None) -> ProxyRule:
    """The rule for one webserver (default: the one users open) at its root or sub-path;
    strip_prefix=True gives the guide's rule (kept to prove that it fails)."""
    web = web or layout.webservers[-1]
    prefix, backend = web.prefix, web.backend
    if not prefix:
        return ProxyRule(pattern="^(.*)$", target=f"{backend}/{{R:1}}", prefix="")
    escaped = re.escape(prefix.lstrip("/"))
    if strip_prefix:
        return ProxyRule(pattern=f"^{escaped}(?:/(.*))?$", target=f"{backend}/{{R:1}}",
                         prefix=prefix)
    return ProxyRule(pattern=f"^{escaped}(/.*)?$", target=f"{backend}{prefix}{{R:1}}",
                     prefix=prefix)


def rule_name(web: Webserver) -> str:
    return RULE_NAME + (" (operators)" if web.audience == OPERATORS else "")


def render_web_config(layout: Layout, *, strip_prefix: bool = False) -> bytes:
    rules = "".join(_rule(layout, web, strip_prefix) for web in layout.webservers)
    where = ", ".join(f"{web.prefix or 'the site root'} -> {web.backend}"
                      for web in layout.webservers)
    prefixed = [w.prefix for w in layout.webservers if w.prefix]
    # (No double hyphen in an XML comment: "path-prefix" is spelled without its dashes.)
    note = ("Each webserver runs with its path prefix; "
            + ("the rule strips it (the guide's rule, kept for the tests)." if strip_prefix
               else "the rules forward the path unchanged.")
            if prefixed else "The rule forwards every path unchanged.")
    text = f"""<?xml version="1.0" encoding="utf-8"?>
<!-- {MARKER} from config/config.yml: Dagster at {where}.
     {note}
     Needs URL Rewrite 2, ARR (proxy enabled) and the allowed server variables: iis_setup.ps1. -->
<configuration>
  <!-- Not inherited by the site's other applications (e.g. ArcGIS Web Adaptor's /arcgis): the
       rules apply to this site's own paths only. -->
  <location path="." inheritInChildApplications="false">
    <system.webServer>
      <rewrite>
        <rules>
{rules}        </rules>
      </rewrite>
    </system.webServer>
  </location>
{_access_locations(layout)}</configuration>
"""
    return text.encode("utf-8")


def _rule(layout: Layout, web: Webserver, strip_prefix: bool) -> str:
    rule = proxy_rule(layout, strip_prefix=strip_prefix, web=web)
    return f"""          <rule name={quoteattr(rule_name(web))} stopProcessing="true">
            <match url={quoteattr(rule.pattern)} />
            <conditions>
              <!-- {{C:1}} is the scheme the browser used (https behind the certificate). -->
              <add input="{{CACHE_URL}}" pattern="^(https?)://" />
            </conditions>
            <serverVariables>
              <set name="HTTP_X_FORWARDED_PROTO" value="{{C:1}}" />
              <set name="HTTP_X_FORWARDED_HOST" value="{{HTTP_HOST}}" />
              <!-- No WebSocket compression through ARR (see iis.py): an empty value removes the
                   Sec-WebSocket-Extensions header the browser sent. -->
              <set name="{WEBSOCKET_EXTENSIONS}" value="" />
            </serverVariables>
            <action type="Rewrite" url={quoteattr(rule.target)} appendQueryString="true" />
          </rule>
"""


def allowed(layout: Layout, web: Webserver) -> Principals:
    """Who URL Authorization lets through to `web`: viewers and operators to the read-only
    webserver, operators only to the full one."""
    assert layout.access is not None
    return layout.access.operators if web.audience == OPERATORS else layout.access.may_view()


def _access_locations(layout: Layout) -> str:
    """Per path: anonymous authentication off, Windows authentication on (sample of Microsoft's
    <windowsAuthentication> reference), and URL Authorization rules that first remove the
    inherited allow-all, then allow the configured groups (roles) and users, one <add> each as in
    Microsoft's samples (<authorization> <add> reference: <remove users="*" roles="" verbs="" />
    then <add accessType="Allow" users="" roles="Administrators" />). The two
    authentication sections are locked at the server level by default: iis_setup.ps1 unlocks
    them for this site only."""
    if layout.access is None:
        return ""
    out = []
    for web in layout.webservers:
        who = allowed(layout, web)
        out.append(f"""  <location path={quoteattr(web.prefix.lstrip("/"))}>
    <system.webServer>
      <security>
        <authentication>
          <anonymousAuthentication enabled="false" />
          <windowsAuthentication enabled="true" />
        </authentication>
        <authorization>
          <remove users="*" roles="" verbs="" />
{_allow_rules(who)}        </authorization>
      </security>
    </system.webServer>
  </location>
""")
    return "".join(out)


def _allow_rules(who: Principals) -> str:
    rules = [f'          <add accessType="Allow" users="" roles={quoteattr(g)} />\n'
             for g in who.groups]
    rules += [f'          <add accessType="Allow" users={quoteattr(u)} roles="" />\n'
              for u in who.users]
    return "".join(rules)
