"""scripts/setup_dagster.ps1's prerequisites and install policy (issue 18, items 5 and 8).

PowerShell cannot run here; these tests read the script: what it checks before step 1 and in
which order, that nothing is changed before those checks pass, that the clone is made as Esri
makes it, and that the pip install is shown, judged by scripts/pro_env.py (whose own parser
accepts the arguments the script passes) and pinned to what was shown.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_pro_env import pro_env

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPT = (PROJECT_DIR / "scripts" / "setup_dagster.ps1").read_text()
README = (PROJECT_DIR / "README.md").read_text()


def function_body(name: str) -> str:
    start = SCRIPT.index(f"function {name}")
    end = SCRIPT.index("\n}\n", start)
    return SCRIPT[start:end]


def python_calls() -> list[list[str]]:
    """Argument lists the script gives `$python` through Invoke-Native, in order."""
    return [re.findall(r"'([^']*)'|(\$\w+)", m.group(1))
            for m in re.finditer(r"Invoke-Native \$python @\(([^)]*)\)", SCRIPT)]


def words(call) -> list[str]:
    return [quoted or var for quoted, var in call]


def test_prerequisites_run_before_step_one_with_arcgis_pro_first():
    call = SCRIPT.index("\nTest-Prerequisites\n")
    assert call < SCRIPT.index("\nInvoke-Step '")
    body = function_body("Test-Prerequisites")
    order = [body.index(marker) for marker in
             ("check-pro", "Get-ExecutionPolicy", "servy-cli --version", "pg_dump.exe")]
    assert order == sorted(order)
    # Nothing changes before the checks pass: no program is run for effect, nothing written.
    for verb in ("Invoke-Native", "New-Item", "Set-", "Remove-", "Copy-"):
        assert verb not in body, verb


def test_each_failed_prerequisite_is_one_line_and_exit_1():
    body = function_body("Test-Prerequisites")
    stops = re.findall(r'Stop-Setup "([^"]*)"', body)
    assert len(stops) == 9 and all(";" in s or ":" in s for s in stops)  # what, then what to do
    assert "exit 1" in function_body("Stop-Setup")


def test_the_minimum_versions_agree_with_pro_env_and_the_readme():
    assert f"$MinPro = '{pro_env.MIN_PRO}'" in SCRIPT
    assert "$MinServy = '10.2'" in SCRIPT
    assert "ArcGIS Pro 3.3 or newer" in README and "Servy 10.2 or newer" in README


def test_the_execution_policies_that_stop_unsigned_scripts_are_refused():
    body = function_body("Test-Prerequisites")
    assert "@('Restricted', 'AllSigned') -contains \"$policy\"" in body
    assert "@('MachinePolicy', 'UserPolicy')" in body  # Group Policy: say who to ask


def test_pg_tools_are_looked_for_where_dagpg_looks():
    body = function_body("Test-Prerequisites")
    assert "$env:DAGPG_PG_BINDIR" in body
    assert "$env:ProgramFiles\\PostgreSQL\\*\\bin" in body
    assert r"C:\Program Files\PostgreSQL\*\bin" in (
        PROJECT_DIR / "src" / "dagpg" / "pgbin.py").read_text()


def test_the_clone_is_made_as_esri_makes_it():
    assert ("Invoke-Native $script:Conda @('create', '--clone', 'arcgispro-py3', '-p', $envPath, "
            "'--pinned', '--yes')") in SCRIPT


def test_the_install_is_shown_judged_and_pinned_to_what_was_shown():
    dry, real = (words(c) for c in python_calls())
    assert dry == ["-m", "pip", "install", "--disable-pip-version-check", "--dry-run",
                   "--quiet", "--report", "$report", "-e", "$ProjectRoot"]
    assert real == ["-m", "pip", "install", "--disable-pip-version-check", "--constraint",
                    "$constraints", "-e", "$ProjectRoot"]
    judge = re.search(r"\$judge = @\(\(Join-Path \$ProjectRoot 'scripts\\pro_env.py'\), "
                      r"([^)]*)\)", SCRIPT)
    argv = [w.strip().strip("'") for w in judge.group(1).split(",")]
    assert argv == ["plan", "--report", "$report", "--constraints", "$constraints"]
    parsed = pro_env.build_parser().parse_args(
        ["plan", "--report", "r.json", "--constraints", "c.txt", "--allow", "pydantic"])
    assert (parsed.command, parsed.allow) == ("plan", ["pydantic"])
    assert "foreach ($name in $AllowReplace) { $judge += @('--allow', $name) }" in SCRIPT
    step = SCRIPT[SCRIPT.index("Invoke-Step 'Python environment"):]
    assert step.index("'--dry-run'") < step.index("& $python @judge") < step.index(
        "'--constraint'")
    assert "if ($LASTEXITCODE -ne 0) { throw 'nothing was installed" in step


def test_check_pro_runs_with_arcgis_pros_own_python():
    body = function_body("Test-Prerequisites")
    assert "'envs\\arcgispro-py3\\python.exe'" in body
    assert "& $pro (Join-Path $ProjectRoot 'scripts\\pro_env.py') check-pro" in body


def test_the_final_verify_waits_for_the_daemon():
    assert "Invoke-Native $dagpg (@('verify', '--public-url', $script:PublicUrl, '--wait', " \
           "\"$WaitSeconds\") + $configs)" in SCRIPT
    assert "[int]$WaitSeconds = 180" in SCRIPT
