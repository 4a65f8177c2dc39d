"""scripts/setup_dagster.ps1 cannot run here (Windows, Servy, IIS); check what it relies on:
every dagpg and dagster command it calls exists with the options it passes, every rendered file
it uses is one `dagpg render all` writes, and the password never reaches a command line."""

from __future__ import annotations

import re
from pathlib import Path

import click

from dagpg.cli import cli as dagpg_cli
from dagpg.render.bundle import render_files
from dagpg.render.layout import layout_from
from dagpg.settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPT = (PROJECT_DIR / "scripts" / "setup_dagster.ps1").read_text()


def calls(program_var: str) -> list[list[str]]:
    """Argument lists the script gives `$<program_var>`: `Invoke-Native $x @('a', 'b')`,
    `Invoke-Native $x (@('a', 'b') + ...)` and `& $x a b`."""
    found = []
    for m in re.finditer(rf"\${program_var}\s+\(?@\(([^)]*)\)", SCRIPT):
        found.append(re.findall(r"'([^']*)'", m.group(1)))
    for m in re.finditer(rf"& \${program_var} ([\w -]+)", SCRIPT):
        found.append(m.group(1).split())
    return found


def resolve(group: click.Group, argv: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command argv names and the options passed to it."""
    command, ctx = group, click.Context(group)
    words = list(argv)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(ctx, words[0])
        assert sub is not None, f"no command {words[0]!r} in {argv}"
        command, words = sub, words[1:]
    return command, [w.split("=", 1)[0] for w in words if w.startswith("--")]


def assert_options_exist(command: click.Command, options: list[str], argv: list[str]) -> None:
    known = {opt for p in command.params for opt in p.opts}
    for option in options:
        assert option in known, f"{argv}: {command.name} has no option {option}"


def test_script_calls_only_dagpg_commands_that_exist():
    found = calls("dagpg")
    assert sorted(c[0] for c in found) == ["backup", "config", "db", "render", "verify",
                                           "watch"]
    for argv in found:
        command, options = resolve(dagpg_cli, argv)
        assert not isinstance(command, click.Group), argv
        assert_options_exist(command, options, argv)
    # The --servy-config options are appended from $configs.
    assert '"--servy-config=$installed\\$name.xml"' in SCRIPT
    assert_options_exist(resolve(dagpg_cli, ["verify"])[0], ["--servy-config"], ["verify"])


def test_script_calls_a_dagster_command_that_exists():
    from dagster._cli import cli as dagster_cli

    (argv,) = calls("dagster")
    assert argv[:3] == ["schedule", "start", "--start-all"]
    command, options = resolve(dagster_cli, argv)
    assert_options_exist(command, options, argv)


def test_script_uses_the_files_render_writes():
    settings = load_settings(PROJECT_DIR / "config" / "config.yml", "prod")
    written = set(render_files(layout_from(settings)))
    used = set()
    for rel in re.findall(r"\$deploy\\([\w\\$.]+\.(?:xml|ps1))", SCRIPT):
        for name in (settings.services.webserver, settings.services.daemon,
                     settings.services.keeper):
            used.add(rel.replace("$name", name).replace("\\", "/"))
    used = {u for u in used if not u.startswith("installed/")}  # servy-cli export writes those
    assert used == {"servy/DagsterWebserver.xml", "servy/DagsterDaemon.xml",
                    "servy/DagsterKeeper.xml", "task/DagsterNightlyBackup.xml"}
    assert used <= written
    assert "Join-Path $deploy 'iis\\iis_setup.ps1'" in SCRIPT and "iis/iis_setup.ps1" in written
    assert "'/TN', 'DagsterNightlyBackup'" in SCRIPT


def test_servy_cli_calls_use_its_documented_syntax():
    assert "'import', '--config=xml', \"--path=$deploy\\servy\\$name.xml\", '--install'" in SCRIPT
    assert "'export', \"--name=$name\", '--config=xml'" in SCRIPT
    assert "@($verb, \"--name=$name\")" in SCRIPT


def test_password_never_on_a_command_line():
    lines = [line for line in SCRIPT.splitlines()
             if "Invoke-Native" in line or line.lstrip().startswith("&")]
    assert len(lines) >= 10
    for line in lines:
        assert "password" not in line.lower(), line


def test_password_comes_from_the_environment_or_a_secure_prompt():
    assert "Read-Host -AsSecureString" in SCRIPT
    assert "[Environment]::SetEnvironmentVariable('DAGSTER_PG_PASSWORD', $password, 'Machine')" in SCRIPT
    assert "ZeroFreeBSTR" in SCRIPT


def test_steps_stop_at_the_first_failure():
    assert "$ErrorActionPreference = 'Stop'" in SCRIPT
    assert len(re.findall(r"^Invoke-Step '", SCRIPT, flags=re.M)) == 8
    assert "exit 1" in SCRIPT and "LASTEXITCODE -ne 0" in SCRIPT
