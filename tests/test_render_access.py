"""`dagpg render` with `dagpg.access`: two webservers, IIS Windows authentication and URL
Authorization, nginx Basic authentication, the appcmd script's argument passing and scope, and
the one-line refusals of settings that cannot be rendered. (Through a real nginx and browser:
test_access.py.)"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.render import servy
from dagpg.render.bundle import render_files
from dagpg.render.layout import layout_from
from dagpg.settings import KitSettings, load_settings
from tests.test_proxy import tool

PROJECT_DIR = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pa55;w=rd"
HOME = r"C:\projects\arcpy-orchestration\dagster_home"
ACCESS = """  access:
    viewers: {groups: ['CORP\\GIS Analysts'], users: ['CORP\\jdoe', viewer]}
    operators: {groups: ['CORP\\GIS Operators'], users: [operator]}
"""


def write_config(tmp_path: Path, text: str = ACCESS) -> Path:
    path = tmp_path / "config" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("dagpg:\n" + text)
    return path


def rendered(tmp_path: Path, text: str = ACCESS) -> dict[str, bytes]:
    return render_files(layout_from(load_settings(write_config(tmp_path, text))))


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    return rendered(tmp_path)


def test_the_defaults_put_dagster_under_a_path_with_access_control():
    settings = KitSettings()
    assert settings.webserver.path_prefix == "/dagster"
    assert (settings.access.enabled, settings.access.admin_path_prefix) == (True, "/dagster-admin")
    assert settings.access.operators.groups == ["Administrators"]  # the server's local admins
    assert settings.services.read_only_webserver == "DagsterWebserverReadOnly"


# --- Servy: every service (both webservers, the daemon, the keeper), one DAGSTER_HOME ------

def test_every_service_shares_dagster_home_and_carries_no_password(files, tmp_path):
    names = [rel for rel in files if rel.startswith("servy/")]
    assert names == ["servy/DagsterWebserver.xml", "servy/DagsterWebserverReadOnly.xml",
                     "servy/DagsterDaemon.xml", "servy/DagsterKeeper.xml"]
    found = {}
    for rel in names:
        path = tmp_path / Path(rel).name
        path.write_bytes(files[rel])
        found[path.stem] = servy.read_service(path)
        assert SECRET not in files[rel].decode() and "PG_PASSWORD" not in files[rel].decode()
    environments = [svc.environment for svc in found.values()]
    assert environments == [{"DAGSTER_HOME": HOME, "PROJECT_ENV": "prod"}] * 4
    workspace = rf'-w "{HOME}\workspace.yaml"'
    assert found["DagsterWebserver"].parameters == (
        f"{workspace} -h 127.0.0.1 -p 3001 --path-prefix /dagster-admin")
    assert found["DagsterWebserverReadOnly"].parameters == (
        f"{workspace} -h 127.0.0.1 -p 3000 --path-prefix /dagster --read-only")
    assert found["DagsterWebserverReadOnly"].fields["StdoutPath"].endswith(
        r"\dagster_webserver_readonly_stdout.log")
    # Nothing depends on anything: a webserver restart cannot stop the daemon.
    assert all(svc.dependencies == () for svc in found.values())


# --- IIS: Windows authentication and URL Authorization per path ------------------------------

def locations(web_config: bytes) -> dict[str, ET.Element]:
    return {loc.get("path"): loc for loc in ET.fromstring(web_config).findall("location")}


def allowed(location: ET.Element) -> list[tuple[str, str]]:
    rules = list(location.find("system.webServer/security/authorization"))
    assert (rules[0].tag, rules[0].attrib) == ("remove", {"users": "*", "roles": "", "verbs": ""})
    assert all(r.tag == "add" and r.get("accessType") == "Allow" for r in rules[1:])
    return [(r.get("roles"), r.get("users")) for r in rules[1:]]


def test_web_config_requires_windows_login_on_both_paths(files):
    found = locations(files["iis/web.config"])
    assert set(found) == {".", "dagster", "dagster-admin"}
    for path in ("dagster", "dagster-admin"):
        auth = found[path].find("system.webServer/security/authentication")
        assert auth.find("anonymousAuthentication").get("enabled") == "false"
        assert auth.find("windowsAuthentication").get("enabled") == "true"


def test_url_authorization_follows_the_configured_groups_and_users(files):
    found = locations(files["iis/web.config"])
    # Operators only at the admin path; viewers and operators at the viewer path.
    assert allowed(found["dagster-admin"]) == [("CORP\\GIS Operators", ""), ("", "operator")]
    assert allowed(found["dagster"]) == [
        ("CORP\\GIS Operators", ""), ("CORP\\GIS Analysts", ""),
        ("", "operator"), ("", "CORP\\jdoe"), ("", "viewer")]


def test_a_plain_list_of_names_allows_each_as_group_or_user(tmp_path, monkeypatch):
    """`viewers: [names]`, as the issue words it ("AD groups or users"): IIS allows each name as
    a role and as a user; nginx takes them as its user names."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    htpasswd = tmp_path / "dagster.htpasswd"
    htpasswd.write_text("ops:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    files = rendered(tmp_path, f"""  access:
    viewers: ['CORP\\GIS Analysts']
    operators: ['CORP\\GIS Operators', ops]
    htpasswd: {htpasswd}
""")
    found = locations(files["iis/web.config"])
    assert allowed(found["dagster-admin"]) == [
        ("CORP\\GIS Operators", ""), ("ops", ""), ("", "CORP\\GIS Operators"), ("", "ops")]
    assert ("CORP\\GIS Analysts", "") in allowed(found["dagster"])
    assert ("", "CORP\\GIS Analysts") in allowed(found["dagster"])
    script = files["iis/iis_setup.ps1"].decode()
    assert "'/dagster-admin: CORP\\GIS Operators, ops (operators)'" in script
    nginx = files["nginx/dagster.conf"].decode()
    operators = nginx.split("map $remote_user $dagpg_operators {", 1)[1].split("}", 1)[0]
    assert '"ops" 1;' in operators


def test_each_path_has_its_rule_to_its_webserver(files):
    rules = ET.fromstring(files["iis/web.config"]).findall(".//rewrite/rules/rule")
    found = {r.get("name"): (r.find("match").get("url"), r.find("action").get("url"))
             for r in rules}
    assert found == {
        "Dagster Reverse Proxy (operators)": (r"^dagster\-admin(/.*)?$",
                                              "http://127.0.0.1:3001/dagster-admin{R:1}"),
        "Dagster Reverse Proxy": ("^dagster(/.*)?$", "http://127.0.0.1:3000/dagster{R:1}"),
    }
    for rule in rules:  # kept prefix, forwarded headers, no WebSocket compression
        sets = {s.get("name"): s.get("value") for s in rule.iter("set")}
        assert sets["HTTP_SEC_WEBSOCKET_EXTENSIONS"] == ""
    assert "/dagster-adminfoo" not in str(re.match(rules[1].find("match").get("url"),
                                                   "dagster-admin/x"))


def test_a_single_webserver_has_no_login_sections(tmp_path):
    files = rendered(tmp_path, "  access:\n    enabled: false\n")
    assert set(locations(files["iis/web.config"])) == {"."}
    assert [rel for rel in files if rel.startswith("servy/")] == [
        "servy/DagsterWebserver.xml", "servy/DagsterDaemon.xml", "servy/DagsterKeeper.xml"]
    script = files["iis/iis_setup.ps1"].decode()
    assert "Web-Windows-Auth" not in script and "unlock" not in script


# --- iis_setup.ps1: appcmd arguments (PowerShell #6292/#6360), features, scope ----------------

def ps_tokens(text: str) -> list[str]:
    """PowerShell argument tokens: quoted strings (with '' and `" escapes) stay whole."""
    quoted = r"'(?:[^']|'')*'|\"(?:[^\"`]|`.)*\""
    return re.findall(rf"{quoted}|@\(|\)|,|(?:[^\s,()'\"]|{quoted})+", text)


def forwarding_calls(script: str) -> list[tuple[str, list[str]]]:
    """Every call of a function that hands its arguments to appcmd, with its argument tokens."""
    forwarders = [m.group(1) for m in re.finditer(
        r"function ([\w-]+)[^{]*\{(?:[^{}]|\{[^{}]*\})*?& \$appcmd", script)]
    assert forwarders, "no function calls appcmd"
    calls = []
    for line in script.splitlines():
        for name in forwarders:
            for m in re.finditer(rf"(?<![\w-]){re.escape(name)}\b(?!\s*\()(.*)", line):
                if line.lstrip().startswith("function"):
                    continue
                calls.append((name, ps_tokens(_call_arguments(m.group(1)))))
    return calls


def _call_arguments(rest: str) -> str:
    """The call's own arguments: up to its closing parenthesis or a pipe."""
    depth, out = 0, []
    for ch in rest:
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        elif ch == "|" and depth == 0:
            break
        out.append(ch)
    return "".join(out)


def unquoted_colon_arguments(script: str) -> list[str]:
    """`-name:value` or `/name:value` tokens that reach an appcmd-forwarding function bare
    (PowerShell splits those in two when a function forwards them: issues #6292, #6360)."""
    bad = []
    for name, tokens in forwarding_calls(script):
        for token in tokens:
            if re.match(r"^[-/][\w.+\[]+:", token):
                bad.append(f"{name} ... {token}")
    return bad


def test_appcmd_never_gets_a_bare_colon_argument(files):
    script = files["iis/iis_setup.ps1"].decode()
    calls = forwarding_calls(script)
    assert len(calls) >= 10
    assert unquoted_colon_arguments(script) == []
    for name, tokens in calls:  # one explicit array of strings (and variables)
        assert tokens[0] == "@(" and tokens[-1] == ")", (name, tokens)
        assert all(t in ("@(", ")", ",") or t[0] in "'\"$" for t in tokens), (name, tokens)
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "@args" not in code and "$args" not in code
    assert "& $appcmd @Arguments" in script


PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"  # PowerShell's CharTraits.cs, IsSingleQuote


def ps_single_quoted(line: str, start: int) -> tuple[str, int]:
    """The value of the single-quoted string opening at line[start], and where it ends, read as
    PowerShell's tokenizer reads it: any of its four quote characters besides ' ends the string,
    a doubled one stands for itself."""
    assert line[start] in PS_SINGLE_QUOTES
    out, i = [], start + 1
    while i < len(line):
        if line[i] in PS_SINGLE_QUOTES:
            if i + 1 < len(line) and line[i + 1] in PS_SINGLE_QUOTES:
                out.append(line[i + 1])
                i += 2
                continue
            return "".join(out), i
        out.append(line[i])
        i += 1
    raise AssertionError(f"unterminated string: {line}")


def test_a_name_with_a_typographic_apostrophe_stays_inside_its_powershell_string(tmp_path):
    """O’Brien as Word or Outlook types it: PowerShell ends a '...' string at ’ too, so the
    setup script's own line about who may look would stop parsing there."""
    name = "CORP\\O\u2019Brien"
    files = rendered(tmp_path, ACCESS.replace("users: ['CORP\\jdoe', viewer]",
                                              f"users: ['{name}', viewer]"))
    config = ET.fromstring(files["iis/web.config"])
    assert name in [a.get("users") for a in config.iter("add")]
    line = next(ln for ln in files["iis/iis_setup.ps1"].decode().splitlines()
                if ln.startswith("Write-Host '/dagster:"))
    value, end = ps_single_quoted(line, len("Write-Host "))
    assert value == (f"/dagster: CORP\\GIS Operators, CORP\\GIS Analysts, operator, {name}, "
                     "viewer (viewers)")
    assert end == len(line) - 1, line


def test_the_check_catches_the_old_forwarding(files):
    """The script as it was (#6360's failure): the test above would have failed on it."""
    old = files["iis/iis_setup.ps1"].decode() + (
        "\nif (-not (Test-Appcmd list config -section:system.webServer/proxy)) { throw 'x' }\n"
        "Invoke-Appcmd set config -section:system.webServer/proxy /enabled:\"True\" "
        "/timeout:\"00:10:00\" /commit:apphost | Out-Null\n")
    assert unquoted_colon_arguments(old) == [
        "Test-Appcmd ... -section:system.webServer/proxy",
        "Invoke-Appcmd ... -section:system.webServer/proxy",
        "Invoke-Appcmd ... /enabled:\"True\"", "Invoke-Appcmd ... /timeout:\"00:10:00\"",
        "Invoke-Appcmd ... /commit:apphost"]


def test_the_script_installs_the_features_it_needs_idempotently(files):
    script = files["iis/iis_setup.ps1"].decode()
    assert "foreach ($feature in @('Web-WebSockets', 'Web-Windows-Auth', 'Web-Url-Auth'))" in script
    assert ("foreach ($feature in @('IIS-WebSockets', 'IIS-WindowsAuthentication', "
            "'IIS-URLAuthorization'))") in script
    assert re.search(r"if \(-not \(Get-WindowsFeature \$feature\)\.Installed\) \{[^}]*"
                     r"Install-WindowsFeature \$feature", script)
    assert re.search(r"State -ne 'Enabled'\) \{[^}]*Enable-WindowsOptionalFeature -Online "
                     r"-FeatureName \$feature -All -NoRestart", script)


def test_the_script_changes_as_little_as_iis_allows(files):
    script = files["iis/iis_setup.ps1"].decode()
    # The authentication sections are unlocked for this site, not the server.
    assert ("foreach ($section in @('system.webServer/security/authentication/"
            "anonymousAuthentication', 'system.webServer/security/authentication/"
            "windowsAuthentication')) {\n    Invoke-Appcmd @('unlock', 'config', $site, "
            "\"-section:$section\", '/commit:apphost')") in script
    # Every change to applicationHost.config names it: appcmd writes "at the level for which
    # it is set" otherwise (Getting Started with AppCmd.exe), here the site's web.config, which
    # cannot unlock a section for itself and which the script replaces with the rendered one.
    for call in re.findall(r"Invoke-Appcmd @\('(?:set|unlock)', 'config', \$site[^\n]*", script):
        assert call.rstrip().endswith("'/commit:apphost') | Out-Null"), call
    # Server variables are allowed for this site; ARR's server-wide proxy settings are only
    # the switch and a timeout that is never lowered (no Host header or buffering changes).
    assert ("Invoke-Appcmd @('set', 'config', $site, "
            "'-section:system.webServer/rewrite/allowedServerVariables'") in script
    server_wide = re.findall(r"Invoke-Appcmd @\('set', 'config', '-section:system.webServer/"
                             r"proxy', '([^']+)'", script)
    assert server_wide == ["/enabled:True", "/timeout:00:10:00"]
    assert "[TimeSpan]::Parse($Matches[1]) -lt [TimeSpan]::Parse('00:10:00')" in script


def test_the_script_refuses_the_site_root_beside_other_applications(tmp_path):
    root = rendered(tmp_path, "  access:\n    enabled: false\n  webserver:\n"
                              "    path_prefix: ''\n")["iis/iis_setup.ps1"].decode()
    assert "foreach ($prefix in @(''))" in root
    assert ("if (-not $prefix -and $taken) {\n        throw \"Dagster at the site root of "
            "'$site' would take over $($taken -join ', '): set dagpg.webserver.path_prefix to "
            "/dagster") in root
    # The site's applications and virtual directories, from appcmd's documented listings.
    assert ("@(Invoke-Appcmd @('list', 'apps', \"/site.name:$site\")) + "
            "@(Invoke-Appcmd @('list', 'vdirs', \"/app.name:$site/\"))") in root
    for line, taken in (('APP "Default Web Site/" (applicationPool:DefaultAppPool)', None),
                        ('APP "Default Web Site/arcgis" (applicationPool:ArcGISWebAdaptor)',
                         "/arcgis"),
                        ('VDIR "Default Web Site/aspnet_client" (physicalPath:C:\\x)',
                         "/aspnet_client")):
        match = re.match(r'^(APP|VDIR) "[^/"]*(/[^"]*)"', line)  # the script's pattern
        assert (match.group(2) if match.group(2) != "/" else None) == taken
    assert "$_ -eq $prefix -or $_.StartsWith(\"$prefix/\")" in root  # nor a path of its own


# --- nginx: Basic authentication, audiences, no secret ---------------------------------------

def test_nginx_names_the_htpasswd_file_and_holds_no_password(tmp_path):
    htpasswd = tmp_path / "dagster.htpasswd"
    htpasswd.write_text("operator:$apr1$abc$0123456789abcdefghijk.\n")
    files = rendered(tmp_path, ACCESS + f"    htpasswd: {htpasswd}\n")
    conf = files["nginx/dagster.conf"].decode()
    assert f'auth_basic_user_file "{htpasswd}";' in conf
    assert "$apr1$" not in conf
    assert 'map $remote_user $dagpg_operators {\n    default 0;\n    "operator" 1;\n}' in conf
    assert '"viewer" 1;' in conf.split("$dagpg_viewers")[1]
    assert "auth_request /_dagpg_access-operators;" in conf


def test_names_with_an_apostrophe_or_an_ampersand_render_for_iis_and_nginx(tmp_path):
    """Active Directory allows ' and & in account names (O'Brien, GIS & Planning): each proxy's
    own parser reads them back (web.config as XML, nginx -t on the rendered nginx)."""
    htpasswd = tmp_path / "dagster.htpasswd"
    htpasswd.write_text("o'brien:$apr1$abc$0123456789abcdefghijk.\n")
    htpasswd.chmod(0o644)
    files = rendered(tmp_path, """  access:
    viewers: {groups: ['CORP\\GIS & Planning'], users: ['CORP\\O''Brien']}
    operators: {users: ["o'brien"]}
""" + f"    htpasswd: {htpasswd}\n")
    adds = ET.fromstring(files["iis/web.config"]).iter("add")
    allowed = {(a.get("roles"), a.get("users")) for a in adds if a.get("accessType") == "Allow"}
    assert {("CORP\\GIS & Planning", ""), ("", "CORP\\O'Brien"), ("", "o'brien")} <= allowed
    assert "CORP\\O''Brien" in files["iis/iis_setup.ps1"].decode()
    folder = tmp_path / "nginx"
    folder.mkdir()
    for name in ("nginx/nginx.conf", "nginx/dagster.conf"):
        (folder / Path(name).name).write_bytes(files[name])
    assert '"o\'brien" 1;' in files["nginx/dagster.conf"].decode()
    checked = subprocess.run([tool("nginx", "DAGPG_NGINX"), "-t", "-p", str(folder), "-c",
                              "nginx.conf", "-e", "error.log"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_render_all_leaves_nginx_out_without_an_htpasswd_file(tmp_path):
    assert not any(rel.startswith("nginx/") for rel in rendered(tmp_path))


# --- bad input: one line, exit 2, nothing written ---------------------------------------------

@pytest.mark.parametrize("what, text, message", [
    ("all", "  access:\n    operators: {groups: [], users: []}\n",
     "dagpg.access.operators is empty: nobody could launch a run; name the Windows groups or "
     "users (or nginx users) who operate Dagster, or set dagpg.access.enabled: false"),
    ("all", "  access:\n    admin_path_prefix: /dagster\n",
     "dagpg.access.admin_path_prefix: /dagster collides with dagpg.webserver.path_prefix "
     "/dagster (the same path, or one inside the other, as IIS compares them: "
     "case-insensitively); choose e.g. /dagster and /dagster-admin"),
    ("all", "  access:\n    admin_path_prefix: /Dagster/admin\n",
     "dagpg.access.admin_path_prefix: /Dagster/admin collides with dagpg.webserver.path_prefix "
     "/dagster (the same path, or one inside the other, as IIS compares them: "
     "case-insensitively); choose e.g. /dagster and /dagster-admin"),
    ("all", "  webserver:\n    path_prefix: ''\n",
     "dagpg.webserver.path_prefix: the site root would also cover "
     "dagpg.access.admin_path_prefix /dagster-admin; with access control each webserver needs "
     "its own path: set dagpg.webserver.path_prefix to e.g. /dagster"),
    ("all", "  access:\n    admin_port: 3000\n",
     "dagpg.access.admin_port: 3000 is also dagpg.webserver.port; give each webserver its own "
     "port"),
    ("nginx", "  access:\n    htpasswd: missing.htpasswd\n",
     "dagpg.access.htpasswd: {project}/missing.htpasswd: no such file; create it with "
     "`htpasswd -c {project}/missing.htpasswd NAME` (apache2-utils) and re-run"),
    ("nginx", "",
     "dagpg.access.htpasswd is not set: nginx asks for a password from an htpasswd file; "
     "create one (`htpasswd -c FILE NAME`, or `openssl passwd -apr1`) and name it there"),
    ("all", "  access:\n    viewers: {users: ['a,b']}\n",
     "dagpg.access.viewers.users: 'a,b' is not a usable account name (empty, or holds a comma, "
     "a double quote, < or >); write e.g. CORP\\GIS Analysts"),
])
def test_settings_that_cannot_be_rendered_are_one_line_and_write_nothing(tmp_path, what, text,
                                                                         message):
    config = write_config(tmp_path, text or "  access: {}\n")
    out = tmp_path / "deploy"
    result = CliRunner().invoke(cli, ["render", what, "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {config}: {message.format(project=tmp_path)}"]
    assert not out.exists()


def test_nginx_needs_an_operator_it_can_ask_for_a_password(tmp_path):
    htpasswd = tmp_path / "h"
    htpasswd.write_text("x:y\n")
    config = write_config(tmp_path, f"  access:\n    htpasswd: {htpasswd}\n")
    result = CliRunner().invoke(cli, ["render", "nginx", "--config", str(config), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().endswith(
        f"dagpg.access.operators.users is empty: nginx knows only the user names of {htpasswd} "
        "(groups are Windows groups, for IIS); name at least one operator")


# --- setup_dagster.ps1 installs what render wrote ----------------------------------------------

def test_setup_script_imports_and_starts_every_rendered_service():
    script = (PROJECT_DIR / "scripts" / "setup_dagster.ps1").read_text()
    assert "$json = & $dagpg render all --out $deploy --json | Out-String" in script
    assert ("Where-Object { $_.kind -eq 'servy' }" in script
            and "GetFileNameWithoutExtension($_.path)" in script)
    importing = script.split("Invoke-Step 'Servy:")[1].split("Invoke-Step")[0]
    assert "foreach ($name in $serviceNames) {" in importing
    starting = script.split("Invoke-Step 'Start the webservers, then the daemon, then the "
                            "keeper'")[1].split("Invoke-Step")[0]
    assert "\n    foreach ($name in $serviceNames) {" in starting
    assert "@('uninstall', \"--name=$stale\")" in importing  # access turned off since
    # render lists the servy files webservers first, then the daemon, the keeper last: the
    # start order.
    order = [rel for rel in render_files(layout_from(load_settings(
        PROJECT_DIR / "config" / "config.yml", "prod"))) if rel.startswith("servy/")]
    assert order == ["servy/DagsterWebserver.xml", "servy/DagsterWebserverReadOnly.xml",
                     "servy/DagsterDaemon.xml", "servy/DagsterKeeper.xml"]


# --- verify: the addresses the exposure check probes ------------------------------------------

def test_machine_addresses_are_this_machines_non_loopback_addresses():
    from dagpg.verify.access import interface_addresses

    found = interface_addresses()  # listed, never connected to (tests probe loopback only)
    assert found == sorted(set(found))
    for address in found:
        assert not ipaddress.ip_address(address.split("%")[0]).is_loopback, address


# --- verify: every service's Servy config, the read-only webserver's included -----------------

def test_same_home_checks_the_read_only_webservers_servy_config(tmp_path, monkeypatch):
    from dagpg.instance import PgTarget
    from dagpg.verify import checks
    from dagpg.verify.services import READ_ONLY, resolve_each, service_homes
    from tests import pgharness

    monkeypatch.setenv(pgharness.PASSWORD_VAR, "x")
    target = PgTarget("127.0.0.1", 5432, "dagster", "dagster", password_source="env:X")
    home = pgharness.write_dagster_home(tmp_path / "home", target)
    other = pgharness.write_dagster_home(tmp_path / "other",
                                         PgTarget("127.0.0.1", 5432, "elsewhere", "dagster"))
    settings = load_settings(write_config(tmp_path))

    def configs(read_only_home: Path) -> list[Path]:
        paths = []
        for name, data in render_files(layout_from(settings), "servy").items():
            fields = {child.tag: child.text for child in ET.fromstring(data)}
            value = read_only_home if "ReadOnly" in name else home
            fields["EnvironmentVariables"] = servy.encode_environment({"DAGSTER_HOME": str(value)})
            path = tmp_path / Path(name).name
            path.write_bytes(servy.service_xml(fields))
            paths.append(path)
        return paths

    services = service_homes(settings, configs(home))
    assert services[READ_ONLY].name == "DagsterWebserverReadOnly"
    result = checks.same_home(services, resolve_each(services))
    assert (result.status, result.detail) == (
        "ok", f"DagsterWebserver, DagsterWebserverReadOnly, DagsterKeeper and DagsterDaemon: "
              f"DAGSTER_HOME={home} -> postgresql://dagster:***@127.0.0.1:5432/dagster")
    services = service_homes(settings, configs(other))
    result = checks.same_home(services, resolve_each(services))
    assert result.status == "fail"
    assert result.detail.startswith(f"DagsterWebserverReadOnly uses postgresql://dagster:***@"
                                    f"127.0.0.1:5432/elsewhere (DAGSTER_HOME={other}, ")
    assert result.detail.endswith("set the same DAGSTER_HOME in every service's environment")
