"""The keeper in the rendered deployment: its Servy service, and the systemd units of all three
services, from the one list in dagpg.render.units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dagpg.render import units as units_module
from dagpg.render.bundle import render_files
from dagpg.render.errors import RenderError
from dagpg.render.layout import layout_from
from dagpg.render.servy import parse_environment, read_service
from dagpg.settings import load_settings

SECRET = "s3cr3t-keeper"


def settings_from(tmp_path: Path, text: str = ""):
    config = tmp_path / "config" / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # One webserver unless the test turns dagpg.access on (tests/test_render_access.py).
    access = "" if "access:" in text else "  access: {enabled: false}\n"
    config.write_text("dagpg:\n" + access + text, encoding="utf-8")
    return load_settings(config)


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    return render_files(layout_from(settings_from(tmp_path)))


def unit_lines(files, name: str) -> list[str]:
    return files[f"systemd/{name}.service"].decode().splitlines()


def test_the_keeper_is_a_third_servy_service(files, tmp_path):
    path = tmp_path / "DagsterKeeper.xml"
    path.write_bytes(files["servy/DagsterKeeper.xml"])
    keeper = read_service(path)
    assert keeper.executable == r"C:\projects\arcpy-orchestration\env\Scripts\dagpg.exe"
    assert keeper.parameters == "watch --service-manager servy"
    # Started after the other two at boot, but depending on neither: a Servy restart of the
    # daemon (ServiceController.Stop) would stop the keeper too.
    assert keeper.fields["StartupType"] == "5" and keeper.dependencies == ()
    daemon = tmp_path / "DagsterDaemon.xml"
    daemon.write_bytes(files["servy/DagsterDaemon.xml"])
    assert keeper.environment == read_service(daemon).environment == {
        "DAGSTER_HOME": r"C:\projects\arcpy-orchestration\dagster_home", "PROJECT_ENV": "prod"}


def test_systemd_units_share_dagster_home_and_hold_no_password(files, tmp_path):
    names = sorted(rel for rel in files if rel.startswith("systemd/"))
    assert names == ["systemd/DagsterDaemon.service", "systemd/DagsterKeeper.service",
                     "systemd/DagsterWebserver.service"]
    root = tmp_path  # dagpg.systemd.project_root empty: the project folder holding config/
    envs = set()
    for rel in names:
        text = files[rel].decode()
        assert SECRET not in text and "DAGSTER_PG_PASSWORD" not in text
        lines = text.splitlines()
        envs.add(tuple(line for line in lines if line.startswith(("Environment", "Working"))))
    assert envs == {(f"WorkingDirectory={root}",
                     f"Environment=DAGSTER_HOME={root}/dagster_home",
                     "Environment=PROJECT_ENV=prod",
                     "EnvironmentFile=/etc/dagpg/dagster.env")}
    web = unit_lines(files, "DagsterWebserver")
    assert (f"ExecStart={root}/.venv/bin/dagster-webserver -w {root}/dagster_home/"
            "workspace.yaml -h 127.0.0.1 -p 3000 --path-prefix /dagster") in web
    assert "User=dagster" in web
    daemon = unit_lines(files, "DagsterDaemon")
    assert f"ExecStart={root}/.venv/bin/dagster-daemon run -w {root}/dagster_home/workspace.yaml" \
        in daemon
    keeper = unit_lines(files, "DagsterKeeper")
    assert f"ExecStart={root}/.venv/bin/dagpg watch --service-manager systemd" in keeper
    assert not [line for line in keeper if line.startswith(("User=", "Requires=", "BindsTo=",
                                                            "PartOf="))]
    assert ("After=network-online.target postgresql.service DagsterWebserver.service "
            "DagsterDaemon.service") in keeper
    for lines in (web, daemon, keeper):
        assert "KillMode=control-group" in lines and "Restart=always" in lines


def test_systemd_paths_and_names_come_from_config(tmp_path):
    settings = settings_from(tmp_path, """  services: {webserver: web, daemon: sched, keeper: keep}
  webserver: {port: 3100, path_prefix: /dagster}
  systemd:
    project_root: /opt/gis
    venv: /opt/venvs/gis
    user: gis
    project_env: test
""")
    files = render_files(layout_from(settings), "systemd")
    assert sorted(files) == ["systemd/keep.service", "systemd/sched.service",
                             "systemd/web.service"]
    web = files["systemd/web.service"].decode()
    assert ("ExecStart=/opt/venvs/gis/bin/dagster-webserver -w /opt/gis/dagster_home/"
            "workspace.yaml -h 127.0.0.1 -p 3100 --path-prefix /dagster") in web
    assert "User=gis" in web and "Environment=PROJECT_ENV=test" in web
    assert "After=network-online.target postgresql.service web.service sched.service" in \
        files["systemd/keep.service"].decode()


@pytest.mark.parametrize("block, message", [
    ("  systemd: {project_root: opt/gis}\n",
     "dagpg.systemd.project_root: 'opt/gis' is not an absolute path; write e.g. "
     "/opt/arcpy-orchestration, or leave it empty for this project's folder"),
    ("  systemd: {project_root: /opt/gis, venv: my venv}\n",
     "dagpg.systemd.venv: 'my venv' must be a path of letters, digits and . _ - / (no spaces "
     "or quotes)"),
    ("  systemd: {user: 'Bad User'}\n", "dagpg.systemd.user: 'Bad User' is not a user name"),
])
def test_bad_systemd_settings_are_one_line(tmp_path, block, message):
    settings = settings_from(tmp_path, block)
    with pytest.raises(RenderError) as err:
        render_files(layout_from(settings), "systemd")
    assert str(err.value) == f"{settings.path}: {message}"


def test_a_service_added_to_the_list_appears_in_servy_and_systemd(tmp_path, monkeypatch):
    original = units_module.units

    def with_read_only(settings, **kwargs):
        found = original(settings, **kwargs)
        web = found[0]
        return [*found, dataclasses.replace(web, name="DagsterWebserverReadOnly",
                                            args=(*web.args, "--read-only"))]

    monkeypatch.setattr(units_module, "units", with_read_only)
    monkeypatch.setattr("dagpg.render.servy.units", with_read_only)
    monkeypatch.setattr("dagpg.render.systemd.units", with_read_only)
    files = render_files(layout_from(settings_from(tmp_path)))
    assert "servy/DagsterWebserverReadOnly.xml" in files
    assert "--read-only" in files["systemd/DagsterWebserverReadOnly.service"].decode()
    assert parse_environment("A=1") == {"A": "1"}  # (imported for the servy round trip)


def test_systemd_analyze_accepts_the_units(tmp_path):
    """systemd's own parser (Debian's systemd package, installed by install_test_tools.sh)."""
    import shutil
    import subprocess

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install_test_tools.sh"
    project = Path(__file__).resolve().parents[1]  # a real venv, so ExecStart= exists
    settings = settings_from(tmp_path, f"  systemd: {{project_root: {project}}}\n")
    paths = []
    for rel, data in render_files(layout_from(settings), "systemd").items():
        path = tmp_path / Path(rel).name
        path.write_bytes(data)
        paths.append(str(path))
    result = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readmes_systemctl_line_enables_every_unit_the_default_config_renders():
    """The README's Linux steps start what `dagpg render systemd` writes from the project's own
    config (access control on: the viewers' read-only webserver too, or /dagster answers 502)."""
    project = Path(__file__).resolve().parents[1]
    settings = load_settings(project / "config" / "config.yml", "prod")
    rendered = {Path(rel).stem for rel in render_files(layout_from(settings), "systemd")}
    readme = (project / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if "systemctl enable --now" in line]
    assert len(lines) == 1, lines
    enabled = set(lines[0].split("enable --now", 1)[1].split())
    assert enabled == rendered
