<#
.SYNOPSIS
    Deploy the project on this Windows server, end to end (deployment guide sections 2 to 8).

.DESCRIPTION
    Run from an elevated PowerShell, in the project root (or pass -ProjectRoot). Every step checks
    before it changes, so running the script again is safe; it stops at the first step that
    fails, with that step's message.

      1. clone arcgispro-py3 into env\ and pip install the project into it
      2. DAGSTER_PG_PASSWORD (existing environment, else a secure prompt) stored machine-wide;
         DAGSTER_HOME checked; `dagpg db upgrade`
      3. `dagpg render all --out deploy`; `servy-cli import` the three services (--install):
         the webserver, the daemon and the keeper (`dagpg watch`)
      4. deploy\iis\iis_setup.ps1 (ARR proxy, server variables, WebSocket feature, web.config)
      5. the nightly backup task (schtasks /Create /XML) and a first `dagpg backup`
      6. start (or restart) the webserver, then the daemon, then the keeper (after
         `dagpg watch --check`: it can restart both through Servy)
      7. `dagster schedule start --start-all`
      8. `dagpg verify --public-url ...` against the installed services

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
    [string]$EnvDir = 'env'
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

$ProjectRoot = (Resolve-Path $ProjectRoot).Path
Set-Location $ProjectRoot
$envPath = Join-Path $ProjectRoot $EnvDir
$python = Join-Path $envPath 'python.exe'
$dagpg = Join-Path $envPath 'Scripts\dagpg.exe'
$dagster = Join-Path $envPath 'Scripts\dagster.exe'
$deploy = Join-Path $ProjectRoot 'deploy'
$env:PROJECT_ENV = $ProjectEnv

Invoke-Step 'Python environment: clone arcgispro-py3 into env\, install the project' {
    if (-not (Test-Path $python)) {
        if (-not (Test-Path $Conda)) { $Conda = (Get-Command conda -ErrorAction Stop).Source }
        Invoke-Native $Conda @('create', '--clone', 'arcgispro-py3', '-p', $envPath, '--yes')
    }
    Invoke-Native $python @('-m', 'pip', 'install', '--disable-pip-version-check', '-e', $ProjectRoot)
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

Invoke-Step 'Servy: render the services (webserver, daemon, keeper) and import them' {
    Invoke-Native $dagpg @('render', 'all', '--out', $deploy)
    $logs = if ([IO.Path]::IsPathRooted($win.log_dir)) { $win.log_dir } else { Join-Path $ProjectRoot $win.log_dir }
    New-Item -ItemType Directory -Force -Path $logs | Out-Null
    foreach ($name in @($services.webserver, $services.daemon, $services.keeper)) {
        Invoke-Native 'servy-cli' @('import', '--config=xml', "--path=$deploy\servy\$name.xml", '--install')
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

Invoke-Step 'Start the webserver, then the daemon, then the keeper' {
    # The keeper (dagpg watch) restarts the other two through servy-cli: check now that it can
    # (servy-cli found, both services installed, this process elevated) before starting it last.
    # It does not depend on them (a Servy restart stops dependent services too), so the order
    # comes from here, and at boot from its delayed automatic start.
    Invoke-Native $dagpg @('watch', '--check', '--service-manager', 'servy')
    foreach ($name in @($services.webserver, $services.daemon, $services.keeper)) {
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
    foreach ($name in @($services.webserver, $services.daemon)) {
        Invoke-Native 'servy-cli' @('export', "--name=$name", '--config=xml', "--path=$installed\$name.xml")
        $configs += "--servy-config=$installed\$name.xml"
    }
    Invoke-Native $dagpg (@('verify', '--public-url', $script:PublicUrl) + $configs)
}

Write-Host "Dagster is deployed: $PublicUrl" -ForegroundColor Green
