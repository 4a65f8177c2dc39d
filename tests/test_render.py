"""`dagpg render`: Servy services, IIS web.config + appcmd script, nginx, the backup task."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.render import iis, servy
from dagpg.render.bundle import render_files
from dagpg.render.errors import ServyConfigError
from dagpg.render.layout import layout_from
from dagpg.settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pa55;w=rd"

# The fields of Servy's import format, copied by hand from the wiki page "Export / Import
# Services" (Servy 10.4; https://github.com/aelassas/servy/wiki/Export-Import-Services) and
# src/Servy.Core/DTOs/ServiceDto.cs. Kept here, apart from the code, so a typo in the renderer
# cannot agree with itself.
SERVY_KNOWN_FIELDS = """
Name DisplayName Description ExecutablePath StartupDirectory Parameters StartupType Priority
CpuAffinity StdoutPath StderrPath StartTimeout StopTimeout EnableConsoleUI EnableSizeRotation
RotationSize EnableDateRotation DateRotationType UseLocalTimeForRotation MaxRotations
EnableDebugLogs EnableHealthMonitoring HeartbeatInterval MaxFailedChecks RecoveryAction
RecoveryOnCleanExit MaxRestartAttempts HeartbeatUrl HeartbeatUrlTimeoutSeconds
EnableHeartbeatUrlFlags FailureProgramPath FailureProgramStartupDirectory
FailureProgramParameters EnvironmentVariables AllowOverriddenRuntimeVars ServiceDependencies
PreLaunchExecutablePath PreLaunchStartupDirectory PreLaunchParameters
PreLaunchEnvironmentVariables PreLaunchStdoutPath PreLaunchStderrPath PreLaunchTimeoutSeconds
PreLaunchRetryAttempts PreLaunchIgnoreFailure PostLaunchExecutablePath
PostLaunchStartupDirectory PostLaunchParameters PreStopExecutablePath PreStopStartupDirectory
PreStopParameters PreStopTimeoutSeconds PreStopLogAsError PostStopExecutablePath
PostStopStartupDirectory PostStopParameters
""".split()
SERVY_INT_FIELDS = {"StartupType", "Priority", "StartTimeout", "StopTimeout", "RotationSize",
                    "DateRotationType", "MaxRotations", "HeartbeatInterval", "MaxFailedChecks",
                    "RecoveryAction", "MaxRestartAttempts"}


def write_config(tmp_path: Path, **webserver) -> Path:
    """A config with these dagpg.webserver keys and one webserver (dagpg.access off: the
    two-webserver deployment is tested in test_render_access.py)."""
    lines = ["dagpg:", "  access:", "    enabled: false"]
    if webserver:
        lines += ["  webserver:"] + [f"    {k}: {v}" for k, v in webserver.items()]
    path = tmp_path / "config" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def rendered(tmp_path: Path, **webserver) -> dict[str, bytes]:
    settings = load_settings(write_config(tmp_path, **webserver))
    return render_files(layout_from(settings))


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    return rendered(tmp_path, path_prefix="/dagster")


def services(files, tmp_path) -> dict[str, servy.ServyService]:
    out = {}
    for rel, data in files.items():
        if rel.startswith("servy/"):
            path = tmp_path / Path(rel).name
            path.write_bytes(data)
            out[path.stem] = servy.read_service(path)
    return out


# --- Servy ------------------------------------------------------------------------------------

def test_servy_files_use_only_fields_servy_knows(files):
    assert list(servy.SERVY_FIELDS) == SERVY_KNOWN_FIELDS
    names = [rel for rel in files if rel.startswith("servy/")]
    assert names == ["servy/DagsterWebserver.xml", "servy/DagsterDaemon.xml",
                     "servy/DagsterKeeper.xml"]
    for rel in names:
        root = ET.fromstring(files[rel])
        assert root.tag == "ServiceDto"
        tags = [child.tag for child in root]
        assert set(tags) <= set(SERVY_KNOWN_FIELDS), set(tags) - set(SERVY_KNOWN_FIELDS)
        assert len(tags) == len(set(tags))
        for child in root:
            if child.tag in SERVY_INT_FIELDS:
                assert re.fullmatch(r"\d+", child.text), (child.tag, child.text)  # enums: ints
            elif child.tag.startswith(("Enable", "Use")):
                assert child.text in ("true", "false"), (child.tag, child.text)


def test_both_services_share_dagster_home_and_project_env(files, tmp_path):
    found = services(files, tmp_path)
    web, daemon = found["DagsterWebserver"], found["DagsterDaemon"]
    assert web.environment == daemon.environment == {
        "DAGSTER_HOME": r"C:\projects\arcpy-orchestration\dagster_home", "PROJECT_ENV": "prod"}
    assert web.fields["EnvironmentVariables"] == daemon.fields["EnvironmentVariables"]


def test_no_password_in_any_rendered_file(files):
    for rel, data in files.items():
        text = data.decode("utf-16" if rel.startswith("task/") else "utf-8")
        assert SECRET not in text, rel
        assert "DAGSTER_PG_PASSWORD=" not in text, rel


def test_webserver_binds_loopback_with_workspace_and_prefix(files, tmp_path):
    web = services(files, tmp_path)["DagsterWebserver"]
    assert web.executable == r"C:\projects\arcpy-orchestration\env\Scripts\dagster-webserver.exe"
    assert web.parameters == (r'-w "C:\projects\arcpy-orchestration\dagster_home\workspace.yaml"'
                              " -h 127.0.0.1 -p 3000 --path-prefix /dagster")
    assert "0.0.0.0" not in web.parameters
    assert web.startup_directory == r"C:\projects\arcpy-orchestration"


def test_no_prefix_flag_when_served_at_the_root(tmp_path):
    files = rendered(tmp_path, path_prefix='""')
    root = ET.fromstring(files["servy/DagsterWebserver.xml"])
    assert root.findtext("Parameters").endswith("-h 127.0.0.1 -p 3000")


def test_logs_and_recovery_follow_the_guide_without_dependencies(files, tmp_path):
    found = services(files, tmp_path)
    web, daemon = found["DagsterWebserver"], found["DagsterDaemon"]
    for svc, stem in ((web, "dagster_webserver"), (daemon, "dagster_daemon")):
        f = svc.fields
        assert f["StdoutPath"] == rf"C:\projects\arcpy-orchestration\reports\logs\{stem}_stdout.log"
        assert f["StderrPath"] == rf"C:\projects\arcpy-orchestration\reports\logs\{stem}_stderr.log"
        assert (f["EnableDateRotation"], f["DateRotationType"], f["MaxRotations"]) == (
            "true", "0", "14")  # daily, 14 kept
        assert f["StartupType"] == "2"  # Automatic
        assert (f["EnableHealthMonitoring"], f["RecoveryAction"], f["MaxRestartAttempts"],
                f["HeartbeatInterval"]) == ("true", "1", "2", "30")  # restart service twice
        assert f["EnableDebugLogs"] == "false"  # debug logs would record the environment
        assert f["EnableConsoleUI"] == "false"
    # No dependency: Servy's "restart the service" stops dependents too and starts only the
    # service itself, so a webserver restart would leave a dependent daemon stopped.
    assert daemon.dependencies == () and web.dependencies == ()
    assert "ServiceDependencies" not in daemon.fields
    assert daemon.parameters == r'run -w "C:\projects\arcpy-orchestration\dagster_home\workspace.yaml"'


# --- reading Servy files (ours and servy-cli export's) ----------------------------------------

SERVY_EXPORT_XML = r"""<?xml version="1.0" encoding="utf-8"?>
<ServiceDto xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <Name>MyTestService</Name>
  <ExecutablePath>C:\Program Files\TestService\TestService.exe</ExecutablePath>
  <Parameters>-arg1 -arg2</Parameters>
  <StartupType>2</StartupType>
  <EnvironmentVariables>APP_ENV=production;APP_CONFIG=C:\Apps\App\config.json</EnvironmentVariables>
  <ServiceDependencies>ServiceA;ServiceB</ServiceDependencies>
</ServiceDto>
"""


def test_read_service_reads_servy_export_xml_and_json(tmp_path):
    xml_path = tmp_path / "export.xml"
    xml_path.write_bytes(b"\xef\xbb\xbf" + SERVY_EXPORT_XML.encode())
    json_path = tmp_path / "export.json"
    json_path.write_text(json.dumps({
        "Name": "MyTestService", "ExecutablePath": r"C:\Program Files\TestService\TestService.exe",
        "Parameters": "-arg1 -arg2", "StartupType": 2, "EnableDebugLogs": False,
        "EnvironmentVariables": r"APP_ENV=production;APP_CONFIG=C:\Apps\App\config.json",
        "ServiceDependencies": "ServiceA;ServiceB"}))
    for path in (xml_path, json_path):
        svc = servy.read_service(path)
        assert svc.name == "MyTestService"
        assert svc.executable == r"C:\Program Files\TestService\TestService.exe"
        assert svc.parameters == "-arg1 -arg2"
        assert svc.environment == {"APP_ENV": "production",
                                   "APP_CONFIG": r"C:\Apps\App\config.json"}
        assert svc.dependencies == ("ServiceA", "ServiceB")
        assert svc.fields["StartupType"] == "2"


@pytest.mark.parametrize("text, expected", [
    (r"A=C:\x;B=1", {"A": r"C:\x", "B": "1"}),
    (r"A=C:\x\;B=1", {"A": r"C:\x;B=1"}),            # a trailing backslash escapes the ;
    (r"A=C:\\x\\;B=1", {"A": "C:\\x\\", "B": "1"}),
    (' A = "  padded " ; B=x=y', {"A": "  padded ", "B": "x=y"}),
    (r'A=\"q\"', {"A": '"q"'}),
    ("A=100%%\nB=2", {"A": "100%", "B": "2"}),
])
def test_environment_parsing_follows_servy(text, expected):
    assert servy.parse_environment(text) == expected


@pytest.mark.parametrize("value", [
    r"C:\projects\arcpy-orchestration\dagster_home", "C:\\ends\\", r"a;b=c", 'say "hi"',
    "  spaces  ", "100%", r"\\server\share\x\\", r"x\;y", "",
])
def test_environment_encoding_round_trips(value):
    text = servy.encode_environment({"K": value, "L": "z"})
    assert servy.parse_environment(text) == {"K": value, "L": "z"}


def test_windows_paths_stay_readable_in_the_environment():
    assert (servy.encode_environment({"DAGSTER_HOME": r"C:\p\dagster_home"})
            == r"DAGSTER_HOME=C:\p\dagster_home")


@pytest.mark.parametrize("content, message", [
    (None, "{p}: no such file; render it with `dagpg render servy` or export it with "
           "`servy-cli export --config=xml`"),
    ("<Service><Name>x</Name></Service>",
     "{p}: root element is <Service>, not <ServiceDto>; this is not a Servy service file"),
    ("<ServiceDto><Name>x</Name></ServiceDto>",
     "{p}: ExecutablePath is missing or empty; a Servy service file needs Name and "
     "ExecutablePath"),
    ("<ServiceDto><Name>x</Name><ExecutablePath>y</ExecutablePath>"
     "<EnvironmentVariables>JUSTTEXT</EnvironmentVariables></ServiceDto>",
     "{p}: EnvironmentVariables: record 1 has no unescaped '='; write KEY=value"),
])
def test_read_service_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "svc.xml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ServyConfigError) as err:
        servy.read_service(path)
    assert str(err.value) == message.format(p=path)


# --- IIS ---------------------------------------------------------------------------------------

def iis_backend(web_config: bytes, path_and_query: str) -> str | None:
    """What IIS URL Rewrite does with the rule in web.config: match the path without its leading
    slash (case-insensitive), substitute {R:n}, append the query string."""
    rule = ET.fromstring(web_config).find(".//system.webServer/rewrite/rules/rule")
    pattern = rule.find("match").get("url")
    action = rule.find("action")
    path, _, query = path_and_query.partition("?")
    match = re.match(pattern, path[1:], flags=re.IGNORECASE)
    if not match:
        return None
    url = re.sub(r"\{R:(\d)\}", lambda m: match.group(int(m.group(1))) or "", action.get("url"))
    assert action.get("appendQueryString") == "true"
    return url + (f"?{query}" if query else "")


SUBPATH_CASES = [
    ("/dagster", "http://127.0.0.1:3000/dagster"),
    ("/dagster/", "http://127.0.0.1:3000/dagster/"),
    ("/dagster/runs/b7e1?tab=logs", "http://127.0.0.1:3000/dagster/runs/b7e1?tab=logs"),
    ("/dagster/_next/static/chunks/main-2820.js",
     "http://127.0.0.1:3000/dagster/_next/static/chunks/main-2820.js"),
    ("/dagster/graphql", "http://127.0.0.1:3000/dagster/graphql"),
    ("/", None), ("/other-app/x", None), ("/dagsterfoo", None),
]


@pytest.mark.parametrize("path, backend", SUBPATH_CASES)
def test_subpath_rule_forwards_the_prefix_unchanged(tmp_path, path, backend):
    web_config = rendered(tmp_path, path_prefix="/dagster")["iis/web.config"]
    assert iis_backend(web_config, path) == backend


@pytest.mark.parametrize("path, backend", [
    ("/", "http://127.0.0.1:3000/"),
    ("/runs/b7e1?tab=logs", "http://127.0.0.1:3000/runs/b7e1?tab=logs"),
    ("/_next/static/chunks/main-2820.js", "http://127.0.0.1:3000/_next/static/chunks/main-2820.js"),
    ("/graphql", "http://127.0.0.1:3000/graphql"),
])
def test_root_rule_forwards_everything(tmp_path, path, backend):
    web_config = rendered(tmp_path, path_prefix='""')["iis/web.config"]
    assert iis_backend(web_config, path) == backend


def test_the_guides_subpath_rule_strips_the_prefix(tmp_path):
    layout = layout_from(load_settings(write_config(tmp_path, path_prefix="/dagster")))
    guide = iis.render_web_config(layout, strip_prefix=True)
    assert ET.fromstring(guide).find(".//match").get("url") == "^dagster(?:/(.*))?$"
    # The webserver (--path-prefix /dagster) answers / with a redirect to /dagster: a loop.
    assert iis_backend(guide, "/dagster/") == "http://127.0.0.1:3000/"
    assert iis_backend(guide, "/dagster/graphql") == "http://127.0.0.1:3000/graphql"  # a 404


def test_web_config_sets_forwarded_headers(files):
    location = ET.fromstring(files["iis/web.config"]).find("location")
    # The site's other applications (ArcGIS Web Adaptor) do not inherit the rules.
    assert (location.get("path"), location.get("inheritInChildApplications")) == (".", "false")
    rule = location.find("system.webServer/rewrite/rules/rule")
    assert rule.get("name") == "Dagster Reverse Proxy" and rule.get("stopProcessing") == "true"
    sets = {s.get("name"): s.get("value") for s in rule.iter("set")}
    assert sets == {"HTTP_X_FORWARDED_PROTO": "{C:1}", "HTTP_X_FORWARDED_HOST": "{HTTP_HOST}",
                    "HTTP_SEC_WEBSOCKET_EXTENSIONS": ""}  # no compression through ARR
    assert rule.find("conditions/add").get("input") == "{CACHE_URL}"


def test_appcmd_script_configures_arr_variables_and_websocket(files):
    script = files["iis/iis_setup.ps1"].decode()
    for needle in ("'-section:system.webServer/proxy', '/enabled:True'", "'/timeout:00:10:00'",
                   "allowedServerVariables",
                   "'HTTP_X_FORWARDED_PROTO', 'HTTP_X_FORWARDED_HOST', "
                   "'HTTP_SEC_WEBSOCKET_EXTENSIONS'", "Web-WebSockets",
                   "IIS-WebSockets", "$site = 'Default Web Site'", "Rendered by `dagpg render iis`"):
        assert needle in script, needle
    # Only what Dagster needs changes server-wide: no Host header or buffering settings.
    assert "preserveHostHeader" not in script and "responseBufferLimit" not in script
    # Idempotent: a server variable is added only when it is not listed yet, for this site.
    assert re.search(r"if \(\$allowed -notmatch .*\) \{\s+Invoke-Appcmd @\('set', 'config', "
                     r"\$site, '-section:system.webServer/rewrite/allowedServerVariables'", script)


# --- the backup task -------------------------------------------------------------------------

NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def test_backup_task_runs_the_nightly_step_without_password(files):
    data = files["task/DagsterNightlyBackup.xml"]
    assert data.startswith(b"\xff\xfe")  # UTF-16 LE, as schtasks /XML expects
    task = ET.fromstring(data)
    assert task.findtext("t:Triggers/t:CalendarTrigger/t:StartBoundary", namespaces=NS).endswith(
        "T03:30:00")  # 2 h after dagpg.backup.schedule.cron "30 1 * * *"
    assert task.findtext("t:Principals/t:Principal/t:UserId", namespaces=NS) == "S-1-5-18"
    args = task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=NS)
    dagpg = r'"C:\projects\arcpy-orchestration\env\Scripts\dagpg.exe"'
    assert (r'set "DAGSTER_HOME=C:\projects\arcpy-orchestration\dagster_home" && '
            r'set "PROJECT_ENV=prod" && '
            f"({dagpg} nightly --backup-if-older-than 12 --silent)") in args
    assert SECRET not in data.decode("utf-16")


def test_backup_task_refuses_a_non_daily_cron(tmp_path):
    path = tmp_path / "config" / "config.yml"
    path.parent.mkdir()
    path.write_text('dagpg:\n  backup:\n    schedule:\n      cron: "*/5 * * * *"\n')
    result = CliRunner().invoke(cli, ["render", "task", "--config", str(path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: dagpg.backup.schedule.cron: '*/5 * * * *' is not a daily schedule 'M H * * *'; "
        "only those can be rendered as a Task Scheduler trigger")
    assert not (tmp_path / "out").exists()


# --- the CLI --------------------------------------------------------------------------------

def test_render_all_writes_every_file(tmp_path):
    config = write_config(tmp_path, path_prefix="/dagster")
    out = tmp_path / "deploy"
    result = CliRunner().invoke(cli, ["render", "all", "--config", str(config), "--out",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = {Path(r["path"]).relative_to(out).as_posix() for r in json.loads(result.output)}
    assert written == {"servy/DagsterWebserver.xml", "servy/DagsterDaemon.xml",
                       "servy/DagsterKeeper.xml", "iis/web.config", "iis/iis_setup.ps1",
                       "nginx/dagster.conf", "nginx/nginx.conf", "task/DagsterNightlyBackup.xml",
                       "systemd/DagsterWebserver.service", "systemd/DagsterDaemon.service",
                       "systemd/DagsterKeeper.service"}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == written


@pytest.mark.parametrize("webserver, message", [
    ({"host": "0.0.0.0"}, "dagpg.webserver.host: 0.0.0.0 would expose the unauthenticated "
                          "Dagster UI past the reverse proxy and HTTPS; use 127.0.0.1 and "
                          "publish it through IIS"),
    ({"path_prefix": "dagster"}, "dagpg.webserver.path_prefix: 'dagster' must be empty or like "
                                 "/dagster (letters, digits, . _ ~ -)"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, webserver, message):
    config = write_config(tmp_path, **webserver)
    out = tmp_path / "deploy"
    result = CliRunner().invoke(cli, ["render", "all", "--config", str(config), "--out",
                                      str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"Error: {config}: {message}"
    assert not out.exists()


def test_render_rejects_an_unknown_kind(tmp_path):
    result = CliRunner().invoke(cli, ["render", "docker", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert ("'docker' is not one of 'servy', 'iis', 'nginx', 'task', 'systemd', 'all'"
            in result.output)


def test_committed_config_renders_what_it_says(tmp_path):
    """What the server gets from config/config.yml (prod): every value that config names lands
    in the file that uses it."""
    settings = load_settings(PROJECT_DIR / "config" / "config.yml", "prod")
    files = render_files(layout_from(settings))
    win, web, names, access = (settings.windows, settings.webserver, settings.services,
                               settings.access)
    # Access control on, no htpasswd: an IIS deployment, so `all` has no nginx files.
    every = (names.webserver, names.read_only_webserver, names.daemon, names.keeper)
    assert sorted(files) == sorted([
        *(f"servy/{n}.xml" for n in every), *(f"systemd/{n}.service" for n in every),
        "iis/web.config", "iis/iis_setup.ps1", "task/DagsterNightlyBackup.xml"])
    root = win.project_root
    environment = {"DAGSTER_HOME": f"{root}\\{win.dagster_home}",
                   "PROJECT_ENV": win.project_env}
    found = services(files, tmp_path)
    for name in every:
        assert found[name].environment == environment
        assert found[name].startup_directory == root
        assert found[name].executable.startswith(f"{root}\\{win.env_dir}\\Scripts\\")
    assert found[names.read_only_webserver].parameters.endswith(
        f" -h {web.host} -p {web.port} --path-prefix {web.path_prefix} --read-only")
    assert found[names.webserver].parameters.endswith(
        f" -h {web.host} -p {access.admin_port} --path-prefix {access.admin_path_prefix}")
    config = files["iis/web.config"].decode()
    assert f'url="http://{web.host}:{web.port}{web.path_prefix}{{R:1}}"' in config
    assert (f'url="http://{web.host}:{access.admin_port}{access.admin_path_prefix}{{R:1}}"'
            in config)
    assert f"$site = '{win.iis_site}'" in files["iis/iis_setup.ps1"].decode()
    task = ET.fromstring(files["task/DagsterNightlyBackup.xml"])
    minute, hour = (int(v) for v in settings.backup.schedule.cron.split()[:2])
    assert task.findtext("t:Triggers/t:CalendarTrigger/t:StartBoundary", namespaces=NS).endswith(
        f"T{(hour + 2) % 24:02d}:{minute:02d}:00")
    args = task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=NS)
    assert f'set "DAGSTER_HOME={environment["DAGSTER_HOME"]}" && set "PROJECT_ENV=prod"' in args
    assert f"{root}\\{win.log_dir}\\dagpg_backup.log" in args
