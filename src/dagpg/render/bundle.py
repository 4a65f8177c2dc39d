"""`dagpg render`: every deployment file from the kit's settings, written under one folder.

    OUT/servy/<Webserver>.xml, <Daemon>.xml   servy-cli import --config=xml --path=FILE --install
    OUT/iis/web.config, iis_setup.ps1        run iis_setup.ps1 elevated
    OUT/nginx/dagster.conf, nginx.conf       Linux, or the tests' real proxy (in `all` only when
                                             dagpg.access names an htpasswd file, or is off)
    OUT/task/DagsterNightlyBackup.xml        schtasks /Create /TN ... /XML FILE /F
    OUT/systemd/<Name>.service               Linux: the same services as systemd units

Everything is rendered in memory first, so a setting that cannot be rendered writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dagpg.progress import ProgressFn
from dagpg.render import iis, iis_script, nginx, servy, systemd, task
from dagpg.render.errors import RenderError
from dagpg.render.layout import Layout, layout_from
from dagpg.settings import KitSettings

KINDS = ("servy", "iis", "nginx", "task", "systemd")


@dataclass(frozen=True)
class Rendered:
    kind: str
    path: Path
    size: int


def render_files(layout: Layout, what: str = "all", *, listen: str = "80",
                 server_name: str = "_") -> dict[str, bytes]:
    """Relative path -> content, for `what` (one of KINDS, or "all")."""
    if what != "all" and what not in KINDS:
        raise RenderError(f"cannot render {what!r}; choose one of {', '.join(KINDS)}, all")
    files: dict[str, bytes] = {}
    if what in ("all", "servy"):
        files.update({f"servy/{name}": data for name, data in servy.render_services(layout).items()})
    if what in ("all", "iis"):
        files["iis/web.config"] = iis.render_web_config(layout)
        files["iis/iis_setup.ps1"] = iis_script.render_setup_script(layout)
    # `all` leaves nginx out where access control has no htpasswd file: an IIS deployment.
    nginx_in_all = layout.access is None or layout.access.htpasswd is not None
    if what == "nginx" or (what == "all" and nginx_in_all):
        files["nginx/dagster.conf"] = nginx.render_server_block(
            layout, listen=listen, server_name=server_name)
        files["nginx/nginx.conf"] = nginx.render_main_config()
    if what in ("all", "task"):
        files[f"task/{task.TASK_NAME}.xml"] = task.render_task(layout)
    if what in ("all", "systemd"):
        files.update({f"systemd/{name}": data
                      for name, data in systemd.render_units(layout).items()})
    return files


def render(settings: KitSettings, out_dir: str | os.PathLike, what: str = "all", *,
           listen: str = "80", server_name: str = "_",
           progress: ProgressFn | None = None) -> list[Rendered]:
    """Render `what` into out_dir (created if needed); files are replaced atomically."""
    files = render_files(layout_from(settings), what, listen=listen, server_name=server_name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RenderError(f"--out {out}: exists and is not a folder; choose a folder")
    written = []
    for rel, data in files.items():
        path = out / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise RenderError(f"cannot write {path}: {exc.strerror}; check --out") from None
        if progress:
            progress(f"wrote {path}")
        written.append(Rendered(kind=rel.split("/", 1)[0], path=path, size=len(data)))
    return written
