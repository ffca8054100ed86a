"""A report's PDF: the HTML report printed by headless Chromium (its page breaks come from the page's CSS)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from finfed.errors import FinfedError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PRINT_TIMEOUT_S = 120


class PdfUnavailable(FinfedError, RuntimeError):
    """No headless browser to print with."""


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def chromium_flags(profile: Path) -> list[str]:
    """Headless, offline, no first-run work: the report is a local self-contained file."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]


def print_pdf(html_path: str | Path, pdf_path: str | Path) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium; a clear error when none is installed."""
    browser = find_chromium()
    if browser is None:
        raise PdfUnavailable("--pdf needs Chromium to print the HTML report, and none was found on PATH "
                             f"(looked for {', '.join(BROWSERS)}); install it (Debian/Ubuntu: "
                             "`apt-get install chromium`) or open the .html report and print it from a browser")
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    with tempfile.TemporaryDirectory(prefix="finfed-pdf-") as profile:
        done = subprocess.run([browser, *chromium_flags(Path(profile)), "--no-pdf-header-footer",
                               f"--print-to-pdf={pdf_path}", html_path.as_uri()],
                              capture_output=True, text=True, timeout=PRINT_TIMEOUT_S)
    if done.returncode != 0 or not pdf_path.is_file():
        raise FinfedError(f"{browser} could not print {html_path} to PDF (exit {done.returncode}): "
                          f"{done.stderr.strip()[-500:]}")
    return pdf_path
