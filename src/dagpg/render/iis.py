"""IIS in front of the webserver: web.config (URL Rewrite + ARR) and an idempotent appcmd script.

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

from dagpg.render.layout import Layout

RULE_NAME = "Dagster Reverse Proxy"
MARKER = "Rendered by `dagpg render iis`"
# ARR: long GraphQL queries and the UI's WebSocket outlive the 30 s default; 0 = no buffering,
# so streamed responses reach the browser as they are produced.
PROXY_TIMEOUT = "00:10:00"
RESPONSE_BUFFER_LIMIT_KB = 0
SERVER_VARIABLES = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST")


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


def proxy_rule(layout: Layout, *, strip_prefix: bool = False) -> ProxyRule:
    """The rule for the configured root or sub-path; strip_prefix=True gives the guide's rule
    (kept to prove that it fails)."""
    prefix = layout.path_prefix
    if not prefix:
        return ProxyRule(pattern="^(.*)$", target=f"{layout.backend}/{{R:1}}", prefix="")
    escaped = re.escape(prefix.lstrip("/"))
    if strip_prefix:
        return ProxyRule(pattern=f"^{escaped}(?:/(.*))?$", target=f"{layout.backend}/{{R:1}}",
                         prefix=prefix)
    return ProxyRule(pattern=f"^{escaped}(/.*)?$", target=f"{layout.backend}{prefix}{{R:1}}",
                     prefix=prefix)


def render_web_config(layout: Layout, *, strip_prefix: bool = False) -> bytes:
    rule = proxy_rule(layout, strip_prefix=strip_prefix)
    where = f"under {rule.prefix}" if rule.prefix else "at the site root"
    # (No double hyphen in an XML comment: "path-prefix" is spelled without its dashes.)
    note = (f"The webserver runs with path prefix {rule.prefix}; "
            + ("the rule strips it (the guide's rule, kept for the tests)." if strip_prefix
               else "the rule forwards the path unchanged.")
            if rule.prefix else "The rule forwards every path unchanged.")
    text = f"""<?xml version="1.0" encoding="utf-8"?>
<!-- {MARKER} from config/config.yml: Dagster {where}, forwarded to {layout.backend}.
     {note}
     Needs URL Rewrite 2, ARR (proxy enabled) and the allowed server variables: iis_setup.ps1. -->
<configuration>
  <system.webServer>
    <rewrite>
      <rules>
        <rule name={quoteattr(RULE_NAME)} stopProcessing="true">
          <match url={quoteattr(rule.pattern)} />
          <conditions>
            <!-- {{C:1}} is the scheme the browser used (https behind the certificate). -->
            <add input="{{CACHE_URL}}" pattern="^(https?)://" />
          </conditions>
          <serverVariables>
            <set name="HTTP_X_FORWARDED_PROTO" value="{{C:1}}" />
            <set name="HTTP_X_FORWARDED_HOST" value="{{HTTP_HOST}}" />
          </serverVariables>
          <action type="Rewrite" url={quoteattr(rule.target)} appendQueryString="true" />
        </rule>
      </rules>
    </rewrite>
  </system.webServer>
</configuration>
"""
    return text.encode("utf-8")


def render_setup_script(layout: Layout) -> bytes:
    """iis_setup.ps1: prerequisites checked, ARR proxy on, server variables allowed, web.config
    installed in the site's root. Each step checks before it changes; re-running is safe."""
    site = layout.iis_site.replace("'", "''")
    variables = ", ".join(f"'{v}'" for v in SERVER_VARIABLES)
    text = f"""# {MARKER} from config/config.yml. Run elevated; running it again changes nothing.
# Configures IIS to publish Dagster ({layout.backend}{layout.path_prefix or '/'}) on site '{site}':
# checks URL Rewrite, ARR and the WebSocket Protocol feature, enables the ARR proxy (timeout
# {PROXY_TIMEOUT}, response buffering off, Host header preserved), allows the X-Forwarded-*
# server variables, and installs web.config (beside this script) in the site's root folder.
$ErrorActionPreference = 'Stop'
$appcmd = Join-Path $env:windir 'System32\\inetsrv\\appcmd.exe'
$site = '{site}'

function Invoke-Appcmd {{
    $ErrorActionPreference = 'Continue'  # appcmd's stderr must not abort before its exit code
    $out = & $appcmd @args 2>&1
    if ($LASTEXITCODE -ne 0) {{ throw "appcmd $($args -join ' ') failed: $out" }}
    return $out
}}

function Test-Appcmd {{
    $ErrorActionPreference = 'Continue'
    & $appcmd @args *> $null
    return $LASTEXITCODE -eq 0
}}

if (-not (Test-Path $appcmd)) {{
    throw 'IIS is not installed (no appcmd.exe): enable Internet Information Services (guide 1.1) and re-run'
}}
if (-not (Test-Path (Join-Path $env:windir 'System32\\inetsrv\\rewrite.dll'))) {{
    throw 'URL Rewrite is not installed: install URL Rewrite 2 (guide 1.2), then re-run'
}}
if (-not (Test-Appcmd list config -section:system.webServer/proxy)) {{
    throw 'Application Request Routing is not installed: install ARR 3 (guide 1.2), then re-run'
}}

# Dagster's UI subscribes over WebSocket on /graphql; IIS forwards it only with this feature.
if (Get-Command Get-WindowsFeature -ErrorAction SilentlyContinue) {{
    if (-not (Get-WindowsFeature Web-WebSockets).Installed) {{
        Write-Host 'installing the IIS WebSocket Protocol feature'
        Install-WindowsFeature Web-WebSockets | Out-Null
    }}
}} elseif ((Get-WindowsOptionalFeature -Online -FeatureName IIS-WebSockets).State -ne 'Enabled') {{
    Write-Host 'enabling the IIS WebSocket Protocol feature'
    Enable-WindowsOptionalFeature -Online -FeatureName IIS-WebSockets -All -NoRestart | Out-Null
}}

Invoke-Appcmd set config -section:system.webServer/proxy /enabled:"True" /timeout:"{PROXY_TIMEOUT}" `
    /responseBufferLimit:"{RESPONSE_BUFFER_LIMIT_KB}" /preserveHostHeader:"True" `
    /reverseRewriteHostInResponseHeaders:"False" /commit:apphost | Out-Null

$allowed = Invoke-Appcmd list config -section:system.webServer/rewrite/allowedServerVariables
foreach ($name in @({variables})) {{
    if (-not ($allowed -match "name=`"$name`"")) {{
        Invoke-Appcmd set config -section:system.webServer/rewrite/allowedServerVariables `
            "/+[name='$name']" /commit:apphost | Out-Null
    }}
}}

$rootDir = [Environment]::ExpandEnvironmentVariables(
    (Invoke-Appcmd list vdir "$site/" /text:physicalPath | Select-Object -First 1).Trim())
$target = Join-Path $rootDir 'web.config'
$source = Join-Path $PSScriptRoot 'web.config'
if ((Test-Path $target) -and -not (Select-String -Path $target -SimpleMatch '{MARKER}' -Quiet)) {{
    throw "$target exists and was not rendered by dagpg: merge the rule of $source into it by hand"
}}
Copy-Item $source $target -Force
Write-Host "IIS ready: rule '{RULE_NAME}' in $target"
"""
    return text.encode("utf-8")
