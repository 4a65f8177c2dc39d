<#
.SYNOPSIS
    Deploy the project on this Windows server, end to end (deployment guide sections 2 to 8).

.DESCRIPTION
    Run from an elevated PowerShell, in the project root (or pass -ProjectRoot). Every step checks
    before it changes, so running the script again is safe; it stops at the first step that
    fails, with that step's message.

      0. prerequisites, before anything changes: ArcGIS Pro 3.3+ (its Python 3.11+), the
         execution policy, Servy 10.2+, pg_dump/pg_restore
      1. clone arcgispro-py3 into env\ (--pinned); show what pip would change there, refuse to
         replace a package arcpy depends on (unless -AllowReplace), install the project
      2. DAGSTER_PG_PASSWORD (existing environment, else a secure prompt) stored machine-wide;
         DAGSTER_HOME checked; `dagpg db upgrade`
      3. `dagpg render all --out deploy`; `servy-cli import` each service (--install): the
         webservers, the daemon and the keeper (`dagpg watch`)
      4. deploy\iis\iis_setup.ps1 (ARR proxy, server variables, WebSocket feature, web.config)
      5. the nightly backup task (schtasks /Create /XML) and a first `dagpg backup`
      6. start (or restart) the webservers, then the daemon, then the keeper (after
         `dagpg watch --check`: it can restart them through Servy)
      7. `dagster schedule start --start-all`
      8. `dagpg verify --public-url ... --wait` against the installed services (every one's Servy export)

    Paths, ports, service names and the URL prefix come from config\config.yml
    (dagpg.windows, dagpg.webserver, dagpg.services, dagpg.watch): the script only calls conda, pip, dagpg,
    servy-cli, appcmd (through iis_setup.ps1), schtasks and dagster.

.EXAMPLE
    PS C:\projects\arcpy-orchestration> .\scripts\setup_dagster.ps1 -PublicUrl https://gis-server/dagster
#>
[CmdletBinding()]
param(
    [string]$ProjectRoot = (Split-Path -Parent $PSScriptRoot),
    # The UI as users reach it through IIS; default https://<this computer's DNS name><prefix>.
    [string]$PublicUrl = '',
    [string]$ProjectEnv = 'prod',
    # ArcGIS Pro's conda (the guide's Python Command Prompt puts it on PATH).
    [string]$Conda = (Join-Path $env:ProgramFiles 'ArcGIS\Pro\bin\Python\Scripts\conda.exe'),
    [string]$EnvDir = 'env',
    # arcgispro-py3's python.exe; default: beside -Conda (<Pro>\bin\Python\envs\arcgispro-py3).
    [string]$ProPython = '',
    # Packages arcpy depends on that pip may replace anyway (e.g. typing-extensions,pydantic on
    # ArcGIS Pro 3.3/3.4): the install policy refuses them otherwise. At your own risk.
    [string[]]$AllowReplace = @(),
    # How long step 8 waits for the freshly started daemon's first heartbeats.
    [int]$WaitSeconds = 180
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$script:step = 0
function Invoke-Step([string]$Title, [scriptblock]$Body) {
    $script:step++
    Write-Host "==> [$script:step/8] $Title" -ForegroundColor Cyan
    try { & $Body }
    catch {
        Write-Host "setup stopped at step ${script:step} ($Title): $($_.Exception.Message)" -ForegroundColor Red
        exit 1
    }
}

# Runs a program; a non-zero exit code stops the step with the command's name.
function Invoke-Native([string]$Exe, [string[]]$Arguments) {
    $ErrorActionPreference = 'Continue'  # progress on stderr is not a failure; the exit code is
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$(Split-Path -Leaf $Exe) $($Arguments -join ' ') exited with code $LASTEXITCODE" }
}

# ---- prerequisites: checked before anything is changed --------------------------------------
$MinPro = '3.3'      # the first ArcGIS Pro with Python 3.11 (scripts\pro_env.py holds the table)
$MinServy = '10.2'   # services that read machine environment variables at each start

function Stop-Setup([string]$Message) {
    Write-Host "setup stopped before step 1: $Message" -ForegroundColor Red
    exit 1
}

function Test-Prerequisites {
    Write-Host '==> Prerequisites: ArcGIS Pro, execution policy, Servy, PostgreSQL client tools' -ForegroundColor Cyan
    $ErrorActionPreference = 'Continue'  # a native program's stderr is not a failure; its exit code is

    # ArcGIS Pro first: Pro 3.0-3.2 ship Python 3.9 and `pip install -e .` would fail in their
    # clones. scripts\pro_env.py check-pro runs with arcgispro-py3's own Python (Python 3.9
    # syntax, so it can say so) and prints one line naming the found and needed versions.
    if (-not (Test-Path $Conda)) {
        $found = Get-Command conda -ErrorAction SilentlyContinue
        if (-not $found) { Stop-Setup "conda is not at $Conda nor on PATH; install ArcGIS Pro $MinPro or newer, or run from its Python Command Prompt" }
        $script:Conda = $found.Source
    }
    $pro = if ($ProPython) { $ProPython } else { Join-Path (Split-Path -Parent (Split-Path -Parent $script:Conda)) 'envs\arcgispro-py3\python.exe' }
    if (-not (Test-Path $pro)) { Stop-Setup "ArcGIS Pro's environment is not at $pro; install ArcGIS Pro $MinPro or newer, or pass -ProPython <arcgispro-py3\python.exe>" }
    & $pro (Join-Path $ProjectRoot 'scripts\pro_env.py') check-pro
    if ($LASTEXITCODE -ne 0) { Stop-Setup "this ArcGIS Pro cannot run the project (the line above says why); ArcGIS Pro $MinPro or newer is needed" }

    # Microsoft, Get-ExecutionPolicy: without -Scope it returns the session's effective policy
    # (Group Policy's first). about_Execution_Policies: Restricted runs no script file and
    # AllSigned only signed ones, so the rendered, unsigned deploy\iis\iis_setup.ps1 of step 4
    # would not run (e.g. when this script was signed to run under AllSigned).
    $policy = Get-ExecutionPolicy
    if (@('Restricted', 'AllSigned') -contains "$policy") {
        $gpo = @('MachinePolicy', 'UserPolicy') | Where-Object { "$(Get-ExecutionPolicy -Scope $_)" -ne 'Undefined' }
        if ($gpo) { Stop-Setup "PowerShell's execution policy is $policy, set by Group Policy ($($gpo -join ', ')), and it stops the rendered, unsigned deploy\iis\iis_setup.ps1 at step 4; ask for RemoteSigned on this server" }
        Stop-Setup "PowerShell's execution policy is $policy, which stops the rendered, unsigned deploy\iis\iis_setup.ps1 at step 4; start the setup with: powershell -ExecutionPolicy Bypass -File .\scripts\setup_dagster.ps1"
    }

    # Servy 10.2 or newer. `servy-cli --version` prints the CLI's version and exits 0
    # (CommandLineParser's version verb: Servy's src\Servy.CLI\Program.cs, errs.IsVersion()).
    if (-not (Get-Command servy-cli -ErrorAction SilentlyContinue)) { Stop-Setup "servy-cli is not on PATH; install Servy $MinServy or newer (winget install servy) and open a new PowerShell" }
    $text = (& servy-cli --version 2>&1 | Out-String).Trim()
    if (-not ($text -match '(\d+)\.(\d+)')) { Stop-Setup "cannot read Servy's version from 'servy-cli --version' ($text); install Servy $MinServy or newer" }
    $servy = [version]"$($Matches[1]).$($Matches[2])"
    if ($servy -lt [version]$MinServy) { Stop-Setup "Servy $servy is installed; this setup needs Servy $MinServy or newer, whose services read machine environment variables such as DAGSTER_PG_PASSWORD each time they start: winget upgrade servy" }

    # pg_dump and pg_restore, where dagpg looks for them (src\dagpg\pgbin.py): the backups of
    # step 5 need them at the database server's major version or newer, which dagpg checks there.
    $dirs = @()
    if ($env:DAGPG_PG_BINDIR) { $dirs += $env:DAGPG_PG_BINDIR }
    $dirs += @(Get-ChildItem "$env:ProgramFiles\PostgreSQL\*\bin" -Directory -ErrorAction SilentlyContinue | Sort-Object FullName -Descending | ForEach-Object { $_.FullName })
    $dirs += @($env:Path -split ';' | Where-Object { $_ })
    $tools = $dirs | Where-Object { (Test-Path (Join-Path $_ 'pg_dump.exe')) -and (Test-Path (Join-Path $_ 'pg_restore.exe')) } | Select-Object -First 1
    if (-not $tools) { Stop-Setup "pg_dump.exe and pg_restore.exe (PostgreSQL's client tools, of the database server's major version or newer) are not in DAGPG_PG_BINDIR, $env:ProgramFiles\PostgreSQL\<version>\bin or PATH; install PostgreSQL's Command Line Tools" }
    Write-Host "    Servy $servy; execution policy $policy; PostgreSQL client tools in $tools"
}

$ProjectRoot = (Resolve-Path $ProjectRoot).Path
Set-Location $ProjectRoot
$envPath = Join-Path $ProjectRoot $EnvDir
$python = Join-Path $envPath 'python.exe'
$dagpg = Join-Path $envPath 'Scripts\dagpg.exe'
$dagster = Join-Path $envPath 'Scripts\dagster.exe'
$deploy = Join-Path $ProjectRoot 'deploy'
$env:PROJECT_ENV = $ProjectEnv

Test-Prerequisites

Invoke-Step 'Python environment: clone arcgispro-py3 into env\ (--pinned), install the project as shown' {
    if (-not (Test-Path $python)) {
        # Esri's clone, as ArcGIS Pro makes it: `conda create --clone arcgispro-py3 --name my_env
        # --pinned`; Esri's --pinned carries arcgispro-py3's conda-meta\pinned over to the clone
        # (pro.arcgis.com/en/pro-app/3.3/arcpy/get-started/what-is-conda.htm).
        Invoke-Native $script:Conda @('create', '--clone', 'arcgispro-py3', '-p', $envPath, '--pinned', '--yes')
    }
    # The install policy (README, "Why Dagster lives in the ArcGIS Pro clone"): pip's dry run
    # first (pip 22.2+: install --dry-run --report), judged by scripts\pro_env.py, which shows
    # every change and refuses to replace a conda package arcpy depends on unless -AllowReplace
    # names it; the real install is then pinned to what was shown.
    $pipVersion = (& $python -m pip --version 2>&1 | Out-String)
    if ($pipVersion -match 'pip (\d+)\.(\d+)' -and [version]"$($Matches[1]).$($Matches[2])" -lt [version]'22.2') {
        throw "pip $($Matches[1]).$($Matches[2]) in $EnvDir\ has no 'install --dry-run --report' (pip 22.2+); update it there first: $python -m pip install --upgrade pip"
    }
    $plan = Join-Path $deploy 'pip'
    New-Item -ItemType Directory -Force -Path $plan | Out-Null
    $report = Join-Path $plan 'report.json'
    $constraints = Join-Path $plan 'constraints.txt'
    Invoke-Native $python @('-m', 'pip', 'install', '--disable-pip-version-check', '--dry-run', '--quiet', '--report', $report, '-e', $ProjectRoot)
    $judge = @((Join-Path $ProjectRoot 'scripts\pro_env.py'), 'plan', '--report', $report, '--constraints', $constraints)
    foreach ($name in $AllowReplace) { $judge += @('--allow', $name) }
    $ErrorActionPreference = 'Continue'
    & $python @judge
    if ($LASTEXITCODE -ne 0) { throw 'nothing was installed: pip would replace packages arcpy depends on (the line above says which, and how to allow it)' }
    $ErrorActionPreference = 'Stop'
    Invoke-Native $python @('-m', 'pip', 'install', '--disable-pip-version-check', '--constraint', $constraints, '-e', $ProjectRoot)
}

Invoke-Step 'Instance: PostgreSQL password, DAGSTER_HOME, dagpg db upgrade' {
    $json = & $dagpg config show --json | Out-String
    if ($LASTEXITCODE -ne 0) { throw 'dagpg config show failed: fix config\config.yml (the message above says how)' }
    $settings = ($json | ConvertFrom-Json).settings
    $script:win = $settings.windows
    $script:prefix = $settings.webserver.path_prefix.TrimEnd('/')
    $script:services = $settings.services
    if ($win.project_root.TrimEnd('\') -ne $ProjectRoot.TrimEnd('\')) {
        throw "config\config.yml has dagpg.windows.project_root=$($win.project_root) but the project is in $ProjectRoot; fix one of them"
    }
    if ($win.project_env -ne $ProjectEnv) {
        throw "config\config.yml has dagpg.windows.project_env=$($win.project_env); run with -ProjectEnv $($win.project_env) or change it"
    }
    # The password: this session's environment, else the machine's, else a prompt that does
    # not echo. It is stored machine-wide (services and the backup task read it from there;
    # see the README, "Deploying on Windows"), never in a file or on a command line.
    $password = $env:DAGSTER_PG_PASSWORD
    if (-not $password) { $password = [Environment]::GetEnvironmentVariable('DAGSTER_PG_PASSWORD', 'Machine') }
    if (-not $password) {
        $secure = Read-Host -AsSecureString 'PostgreSQL password of the dagster role'
        $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($secure)
        try { $password = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr) }
        finally { [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr) }
    }
    if (-not $password) { throw 'no PostgreSQL password given; set DAGSTER_PG_PASSWORD or answer the prompt' }
    $env:DAGSTER_PG_PASSWORD = $password
    if ([Environment]::GetEnvironmentVariable('DAGSTER_PG_PASSWORD', 'Machine') -ne $password) {
        [Environment]::SetEnvironmentVariable('DAGSTER_PG_PASSWORD', $password, 'Machine')
    }
    $home_ = if ([IO.Path]::IsPathRooted($win.dagster_home)) { $win.dagster_home } else { Join-Path $ProjectRoot $win.dagster_home }
    if (-not (Test-Path (Join-Path $home_ 'dagster.yaml'))) { throw "$home_\dagster.yaml is missing; it comes with the project (dagster_home\)" }
    $env:DAGSTER_HOME = $home_
    $script:workspace = Join-Path $home_ 'workspace.yaml'
    Invoke-Native $dagpg @('db', 'upgrade')
}

Invoke-Step 'Servy: render the services and import them' {
    $json = & $dagpg render all --out $deploy --json | Out-String
    if ($LASTEXITCODE -ne 0) { throw 'dagpg render failed: fix config\config.yml (the message above says how)' }
    # The services this configuration has, in start order: the webservers (with dagpg.access the
    # full one and the read-only one), the daemon, then the keeper. None depends on another.
    $script:serviceNames = @(($json | ConvertFrom-Json) | Where-Object { $_.kind -eq 'servy' } |
        ForEach-Object { [IO.Path]::GetFileNameWithoutExtension($_.path) })
    $logs = if ([IO.Path]::IsPathRooted($win.log_dir)) { $win.log_dir } else { Join-Path $ProjectRoot $win.log_dir }
    New-Item -ItemType Directory -Force -Path $logs | Out-Null
    foreach ($name in $serviceNames) {
        Invoke-Native 'servy-cli' @('import', '--config=xml', "--path=$deploy\servy\$name.xml", '--install')
    }
    # A read-only webserver left from a configuration with dagpg.access would hold the port.
    $stale = $services.read_only_webserver
    if ($stale -and $serviceNames -notcontains $stale -and (Get-Service $stale -ErrorAction SilentlyContinue)) {
        Invoke-Native 'servy-cli' @('uninstall', "--name=$stale")
    }
}

Invoke-Step 'IIS: reverse proxy (deploy\iis\iis_setup.ps1)' {
    & (Join-Path $deploy 'iis\iis_setup.ps1')
}

Invoke-Step 'Nightly backup task (deploy\task\DagsterNightlyBackup.xml), and a first backup' {
    Invoke-Native 'schtasks' @('/Create', '/TN', 'DagsterNightlyBackup', '/XML', "$deploy\task\DagsterNightlyBackup.xml", '/F')
    # Rehearse it now (and give step 8's newest-backup check something to find); a re-run of
    # this script within a day skips it.
    Invoke-Native $dagpg @('backup', '--if-older-than', '24')
}

Invoke-Step 'Start the webservers, then the daemon, then the keeper' {
    # The keeper (dagpg watch) restarts the others through servy-cli: check now that it can
    # (servy-cli found, the services installed, this process elevated) before starting it last.
    # It does not depend on them (a Servy restart stops dependent services too), so the order
    # comes from here (render order), and at boot from its delayed automatic start.
    Invoke-Native $dagpg @('watch', '--check', '--service-manager', 'servy')
    foreach ($name in $serviceNames) {
        $verb = if ((Get-Service $name).Status -eq 'Running') { 'restart' } else { 'start' }
        Invoke-Native 'servy-cli' @($verb, "--name=$name")
    }
}

Invoke-Step 'Schedules: dagster schedule start --start-all' {
    Invoke-Native $dagster @('schedule', 'start', '--start-all', '-w', $workspace)
}

Invoke-Step 'Verify through IIS: dagpg verify --public-url' {
    if (-not $script:PublicUrl) { $script:PublicUrl = "https://$([Net.Dns]::GetHostEntry('').HostName)$prefix" }
    $installed = Join-Path $deploy 'installed'
    New-Item -ItemType Directory -Force -Path $installed | Out-Null
    $configs = @()
    foreach ($name in $serviceNames) {
        Invoke-Native 'servy-cli' @('export', "--name=$name", '--config=xml', "--path=$installed\$name.xml")
        $configs += "--servy-config=$installed\$name.xml"
    }
    # The daemon started at step 6 has written no heartbeat yet: wait for it, bounded.
    Invoke-Native $dagpg (@('verify', '--public-url', $script:PublicUrl, '--wait', "$WaitSeconds") + $configs)
}

Write-Host "Dagster is deployed: $PublicUrl" -ForegroundColor Green
