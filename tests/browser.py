"""Headless Chromium for the report tests: open a page, record what went wrong.

Drives Debian's ``chromium`` through Playwright (its Python package carries
its own driver and never downloads a browser here: it is pointed at the
system binary). The flags are the ones this machine's closed network needs;
Playwright gives each launch a fresh, empty profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLog:
    """What the page said and asked for while it loaded."""

    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    # (url, why): a request Chromium started and did not complete.
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")]


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium (one process; open pages with :func:`new_page`)."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise RuntimeError("chromium is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, width: int = 1280, height: int = 900) -> tuple[Any, PageLog]:
    """A fresh page, and the log of everything it says and asks for."""
    page = browser.new_page(viewport={"width": width, "height": height})
    log = PageLog()
    page.on("console", lambda message: log.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    page.on("request", lambda request: log.requests.append(request.url))
    page.on(
        "requestfailed",
        lambda request: log.failed.append((request.url, request.failure or "")),
    )
    return page, log


def screenshot(html: Path, png: Path, *, width: int = 1280, full_page: bool = True) -> None:
    """A PNG of *html* as Chromium draws it."""
    with chromium() as browser:
        page, _ = new_page(browser, width=width)
        page.goto(html.resolve().as_uri())
        page.screenshot(path=str(png), full_page=full_page)


def main() -> None:
    """Regenerate the documentation's screenshot of the seed's report.

    ``python -m tests.browser docs/images/seed-true-positive-report.png``
    """
    import sys
    import tempfile

    from playbooks.cli import main as tokenward
    from tests.cli_helpers import settings_file

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/seed-true-positive-report.png")
    with tempfile.TemporaryDirectory() as folder:
        html = Path(folder) / "seed-true-positive.html"
        args = [
            "--config",
            str(settings_file(Path(folder))),
            "exercise",
            "seed-true-positive",
        ]
        args += ["--report", str(html), "--markdown", str(Path(folder) / "seed.md")]
        try:
            tokenward(args)
        except SystemExit as exit_:
            if exit_.code:
                raise
        target.parent.mkdir(parents=True, exist_ok=True)
        screenshot(html, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
