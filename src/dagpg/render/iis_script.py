"""iis_setup.ps1: prerequisites checked, IIS features installed, ARR and the site prepared,
web.config installed. Each step checks before it changes; running it again is safe.

Every appcmd call passes one explicit array of strings (`Invoke-Appcmd @('set', 'config',
'-section:...')`). Forwarding `@args` instead breaks a token such as
`-section:system.webServer/proxy` into `-section:` and `system.webServer/proxy` (PowerShell
issues #6292 and #6360): the ARR check then failed even where ARR is installed.

What is changed where (narrowest scope IIS allows; Microsoft's appcmd and configuration
references):
- ARR's proxy switch and timeout live in `system.webServer/proxy`, a server-level section (the
  ARR "Server Proxy Settings" page): turning the proxy on and raising its timeout affect every
  ARR rule on the server. The timeout is only ever raised, never lowered; the Host header and
  response buffering are left as they are (Dagster's redirects are relative paths).
- The allowed server variables are added for this site only (`appcmd set config "<site>" ...
  /commit:apphost`, a <location> in applicationHost.config).
- The authentication sections are locked at the server level (overrideModeDefault="Deny"); they
  are unlocked for this site only (`appcmd unlock config "<site>" -section:... /commit:apphost`,
  Microsoft's "An Overview of Feature Delegation in IIS"), so web.config may set them for
  Dagster's paths. Without /commit:apphost appcmd writes "at the level for which it is set" (the
  site's web.config, which the script then replaces): Microsoft's "Getting Started with
  AppCmd.exe", "Controlling Location of Configuration".
- The rewrite rules sit in `<location path="." inheritInChildApplications="false">`: the site's
  other applications do not inherit them. A site-root rule is refused where the site holds other
  applications or virtual directories (ArcGIS Web Adaptor's /arcgis, /portal).
"""

from __future__ import annotations

from dagpg.render.iis import MARKER, PROXY_TIMEOUT, SERVER_VARIABLES, allowed, rule_name
from dagpg.render.layout import Layout

AUTH_SECTIONS = ("system.webServer/security/authentication/anonymousAuthentication",
                 "system.webServer/security/authentication/windowsAuthentication")
# Install-WindowsFeature names on Windows Server, Enable-WindowsOptionalFeature names on client
# Windows: WebSocket Protocol (the UI's /graphql subscription), Windows Authentication, URL
# Authorization.
FEATURES = (("Web-WebSockets", "IIS-WebSockets"),)
ACCESS_FEATURES = (("Web-Windows-Auth", "IIS-WindowsAuthentication"),
                   ("Web-Url-Auth", "IIS-URLAuthorization"))


# PowerShell's tokenizer ends a single-quoted string at any of these, not only at ' (U+2018,
# U+2019, U+201A, U+201B: SpecialChars / IsSingleQuote in PowerShell's
# engine/parser/CharTraits.cs); a name typed as O’Brien would end the string early.
_PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def _ps(value: str) -> str:
    """A PowerShell single-quoted string: every single-quote character doubled, as PowerShell's
    own CodeGeneration.EscapeSingleQuotedStringContent does."""
    return "'" + "".join(c * 2 if c in _PS_SINGLE_QUOTES else c for c in value) + "'"


def _array(*items: str) -> str:
    return "@(" + ", ".join(items) + ")"


def render_setup_script(layout: Layout) -> bytes:
    site = _ps(layout.iis_site)
    features = FEATURES + (ACCESS_FEATURES if layout.access else ())
    server_features = _array(*(_ps(s) for s, _ in features))
    client_features = _array(*(_ps(c) for _, c in features))
    variables = _array(*(_ps(v) for v in SERVER_VARIABLES))
    prefixes = _array(*(_ps(w.prefix) for w in layout.webservers))
    where = ", ".join(f"{w.backend}{w.prefix or '/'}" for w in layout.webservers)
    text = f"""# {MARKER} from config/config.yml. Run elevated; running it again changes nothing.
# Publishes Dagster ({where}) on IIS site {site}: checks URL Rewrite and ARR, installs the IIS
# features it needs when missing, turns the ARR proxy on, allows the rules' server variables for
# this site{", unlocks the authentication sections for this site" if layout.access else ""}, and
# installs web.config (beside this script) in the site's root folder.
$ErrorActionPreference = 'Stop'
$appcmd = Join-Path $env:windir 'System32\\inetsrv\\appcmd.exe'
$site = {site}

# appcmd gets each argument as one element of an explicit string array: forwarding @args would
# split '-section:x' in two (PowerShell issues #6292, #6360).
function Invoke-Appcmd([string[]]$Arguments) {{
    $ErrorActionPreference = 'Continue'  # appcmd's stderr must not abort before its exit code
    $out = & $appcmd @Arguments 2>&1
    if ($LASTEXITCODE -ne 0) {{ throw "appcmd $($Arguments -join ' ') failed: $out" }}
    return $out
}}

function Test-Appcmd([string[]]$Arguments) {{
    $ErrorActionPreference = 'Continue'
    & $appcmd @Arguments *> $null
    return $LASTEXITCODE -eq 0
}}

if (-not (Test-Path $appcmd)) {{
    throw 'IIS is not installed (no appcmd.exe): enable Internet Information Services (guide 1.1) and re-run'
}}
if (-not (Test-Path (Join-Path $env:windir 'System32\\inetsrv\\rewrite.dll'))) {{
    throw 'URL Rewrite is not installed: install URL Rewrite 2 (guide 1.2), then re-run'
}}
if (-not (Test-Appcmd @('list', 'config', '-section:system.webServer/proxy'))) {{
    throw 'Application Request Routing is not installed: install ARR 3 (guide 1.2), then re-run'
}}
if (-not (Test-Appcmd @('list', 'site', $site))) {{
    throw "IIS has no site '$site': create it or set dagpg.windows.iis_site in config\\config.yml"
}}

# The site's other applications and virtual directories (ArcGIS Web Adaptor's /arcgis, /portal):
# a rule at the site root would answer all of their paths, and no path of Dagster's may be one.
$taken = @()
foreach ($line in @(Invoke-Appcmd @('list', 'apps', "/site.name:$site")) + @(Invoke-Appcmd @('list', 'vdirs', "/app.name:$site/"))) {{
    if ("$line" -match '^(APP|VDIR) "[^/"]*(/[^"]*)"') {{
        if ($Matches[2] -ne '/') {{ $taken += $Matches[2] }}
    }}
}}
foreach ($prefix in {prefixes}) {{
    if (-not $prefix -and $taken) {{
        throw "Dagster at the site root of '$site' would take over $($taken -join ', '): set dagpg.webserver.path_prefix to /dagster in config\\config.yml (or give Dagster a site of its own, dagpg.windows.iis_site), render again and re-run"
    }}
    $clash = $taken | Where-Object {{ $prefix -and ($_ -eq $prefix -or $_.StartsWith("$prefix/")) }}
    if ($clash) {{
        throw "'$site' already has $($clash -join ', ') at Dagster's path ${{prefix}}: choose another path prefix in config\\config.yml, render again and re-run"
    }}
}}

# IIS features, installed when missing: Install-WindowsFeature on Windows Server,
# Enable-WindowsOptionalFeature on client Windows (both leave an installed feature alone).
if (Get-Command Get-WindowsFeature -ErrorAction SilentlyContinue) {{
    foreach ($feature in {server_features}) {{
        if (-not (Get-WindowsFeature $feature).Installed) {{
            Write-Host "installing the IIS feature $feature"
            Install-WindowsFeature $feature | Out-Null
        }}
    }}
}} else {{
    foreach ($feature in {client_features}) {{
        if ((Get-WindowsOptionalFeature -Online -FeatureName $feature).State -ne 'Enabled') {{
            Write-Host "enabling the IIS feature $feature"
            Enable-WindowsOptionalFeature -Online -FeatureName $feature -All -NoRestart | Out-Null
        }}
    }}
}}

# ARR's proxy switch and timeout are server-level settings: they apply to every ARR rule on this
# server. The timeout is raised to {PROXY_TIMEOUT} when shorter, never lowered.
$proxy = "$(Invoke-Appcmd @('list', 'config', '-section:system.webServer/proxy', '/config:*'))"
if ($proxy -notmatch 'enabled="true"') {{
    Invoke-Appcmd @('set', 'config', '-section:system.webServer/proxy', '/enabled:True', '/commit:apphost') | Out-Null
}}
if (-not ($proxy -match 'timeout="([^"]+)"') -or [TimeSpan]::Parse($Matches[1]) -lt [TimeSpan]::Parse('{PROXY_TIMEOUT}')) {{
    Invoke-Appcmd @('set', 'config', '-section:system.webServer/proxy', '/timeout:{PROXY_TIMEOUT}', '/commit:apphost') | Out-Null
}}

# The server variables the rules set, allowed for this site only.
$allowed = "$(Invoke-Appcmd @('list', 'config', $site, '-section:system.webServer/rewrite/allowedServerVariables'))"
foreach ($name in {variables}) {{
    if ($allowed -notmatch "name=`"$name`"") {{
        Invoke-Appcmd @('set', 'config', $site, '-section:system.webServer/rewrite/allowedServerVariables', "/+[name='$name']", '/commit:apphost') | Out-Null
    }}
}}
{_unlock(layout)}
$rootDir = [Environment]::ExpandEnvironmentVariables(
    ((Invoke-Appcmd @('list', 'vdir', "$site/", '/text:physicalPath')) | Select-Object -First 1).Trim())
$target = Join-Path $rootDir 'web.config'
$source = Join-Path $PSScriptRoot 'web.config'
if ((Test-Path $target) -and -not (Select-String -Path $target -SimpleMatch '{MARKER}' -Quiet)) {{
    throw "$target exists and was not rendered by dagpg: merge the rules of $source into it by hand"
}}
Copy-Item $source $target -Force
Write-Host "IIS ready: {', '.join(repr(rule_name(w)) for w in layout.webservers)} in $target"
{_who(layout)}"""
    return text.encode("utf-8")


def _unlock(layout: Layout) -> str:
    if layout.access is None:
        return ""
    sections = _array(*(_ps(s) for s in AUTH_SECTIONS))
    return f"""
# web.config turns anonymous authentication off and Windows authentication on for Dagster's
# paths; both sections are locked at the server level by default. Unlocked for this site only,
# in applicationHost.config (/commit:apphost: appcmd otherwise writes at the level it is given,
# the site's own web.config, which cannot unlock itself and is replaced below). Idempotent.
foreach ($section in {sections}) {{
    Invoke-Appcmd @('unlock', 'config', $site, "-section:$section", '/commit:apphost') | Out-Null
}}
"""


def _who(layout: Layout) -> str:
    if layout.access is None:
        return "Write-Host 'No login: anyone who reaches this site can launch runs (dagpg.access.enabled is false)'\n"
    lines = []
    for web in layout.webservers:
        who = allowed(layout, web)
        names = ", ".join(dict.fromkeys([*who.groups, *who.users])) or "nobody"
        lines.append(f"Write-Host {_ps(f'{web.prefix}: {names} ({web.audience})')}\n")
    return "".join(lines)
