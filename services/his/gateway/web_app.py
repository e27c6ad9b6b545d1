"""The built patient web app, served to the gateway (which serves it to browsers).

The app is a single-page app: its files are served as they are, and any other path without a file
extension gets index.html (the app routes it in the browser). No file outside the build
directory is ever served. Without a build, every page says how to make one.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from his.runtime.documents_http import Document

_HTML = "text/html; charset=utf-8"
# index.html names the current hashed assets: always asked again. Hashed assets never change.
_INDEX_CACHE = "no-cache"
_ASSET_CACHE = "public, max-age=31536000, immutable"
_FILE_CACHE = "public, max-age=300"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": _HTML,
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".map": "application/json",
}


def not_built_page(app_dir: Path) -> Document:
    """What every path answers while the app has not been built."""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HIS: web app not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>The patient web app is not built</h1>
<p>The gateway serves the app from <code>{app_dir}</code>, which holds no
<code>index.html</code>. Build it (see clients/web/README.md), or point
<code>HIS_WEB_APP_DIR</code> at a build, then reload this page.</p>
<p>The rpcs work already: this gateway answers gRPC-web at this same address.</p>
</body></html>
"""
    return Document(body.encode(), _HTML, status=503)


class WebApp:
    """Resolves request paths to the files of a build directory."""

    def __init__(self, app_dir: Path) -> None:
        self.app_dir = app_dir.resolve()

    def resolve(self, path: str) -> Document | None:
        """The document for a request path; reads the disk (call it off the event loop)."""
        index = self.app_dir / "index.html"
        if not index.is_file():
            return not_built_page(self.app_dir)
        relative = path.lstrip("/")
        candidate = (self.app_dir / relative).resolve() if relative else index
        if not candidate.is_relative_to(self.app_dir):
            return None
        if candidate.is_file():
            return _file(candidate, self.app_dir)
        if "." in Path(relative).name:
            return None  # a missing file (an old asset): 404, not the app's page
        return _file(index, self.app_dir)


def _file(path: Path, root: Path) -> Document:
    suffix = path.suffix.lower()
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(path.name)[0]
    if path.name == "index.html":
        cache = _INDEX_CACHE
    elif path.relative_to(root).parts[0] == "assets":
        cache = _ASSET_CACHE
    else:
        cache = _FILE_CACHE
    return Document(
        path.read_bytes(), content_type or "application/octet-stream", cache_control=cache
    )
