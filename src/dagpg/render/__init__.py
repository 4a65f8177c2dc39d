"""Deployment files from one source (config.yml): Servy services, IIS, nginx, the backup task.

`render(settings, out_dir, what)` writes them; `servy.read_service(path)` reads a Servy service
file back (ours or `servy-cli export`'s).
"""
