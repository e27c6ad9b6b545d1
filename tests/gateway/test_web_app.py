"""The web app's files as the static server resolves them: the build's files, the app's index for
its own paths, nothing outside the build, a clear page while there is no build."""

from __future__ import annotations

from pathlib import Path

from his.gateway.web_app import WebApp


def _build(root: Path) -> Path:
    (root / "dist" / "assets").mkdir(parents=True)
    (root / "dist" / "index.html").write_text("<!doctype html><title>app</title>")
    (root / "dist" / "assets" / "main-4f3a.js").write_text("export {}")
    (root / "dist" / "manifest.webmanifest").write_text("{}")
    (root / "secret.txt").write_text("not for browsers")
    return root / "dist"


def test_without_a_build_every_path_explains_how_to_make_one(tmp_path: Path) -> None:
    app = WebApp(tmp_path / "dist")

    for path in ("/", "/appointments", "/assets/main.js"):
        document = app.resolve(path)
        assert document is not None
        assert document.status == 503
        assert b"not built" in document.body
        assert str(tmp_path / "dist").encode() in document.body


def test_files_are_served_with_their_type_and_cache_policy(tmp_path: Path) -> None:
    app = WebApp(_build(tmp_path))

    script = app.resolve("/assets/main-4f3a.js")
    manifest = app.resolve("/manifest.webmanifest")
    index = app.resolve("/")

    assert script is not None and manifest is not None and index is not None
    assert (script.content_type, script.cache_control) == (
        "text/javascript; charset=utf-8",
        "public, max-age=31536000, immutable",
    )
    assert manifest.content_type == "application/manifest+json"
    assert (index.body, index.cache_control) == (b"<!doctype html><title>app</title>", "no-cache")


def test_the_apps_own_paths_get_its_index_and_missing_files_do_not(tmp_path: Path) -> None:
    app = WebApp(_build(tmp_path))

    deep = app.resolve("/appointments/42/cancel")

    assert deep is not None and deep.body.startswith(b"<!doctype html>")
    assert app.resolve("/assets/main-0000.js") is None


def test_nothing_outside_the_build_is_served(tmp_path: Path) -> None:
    app = WebApp(_build(tmp_path))

    for path in (
        "/../secret.txt",
        "/assets/../../secret.txt",
        "//etc/passwd",
        "/../dist/../secret.txt",
    ):
        document = app.resolve(path)
        assert document is None or b"not for browsers" not in document.body
        assert document is None or b"root:" not in document.body
