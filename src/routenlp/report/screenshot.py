"""Render a written HTML report with headless Chromium and measure the picture, so a test
can tell that the page really shows tables and plots (not a blank or broken page).

The browser is whatever `ROUTENLP_CHROMIUM` names, else the first of chromium,
chromium-browser, google-chrome on PATH (Debian: `apt-get install -y chromium`,
`make setup-browser`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from routenlp.errors import BrowserError, DataError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = ("install Debian's chromium (`make setup-browser`, i.e. `apt-get install -y chromium`) "
                "or set ROUTENLP_CHROMIUM to a Chromium/Chrome binary")


def find_chromium() -> str:
    """The browser binary to run; ROUTENLP_CHROMIUM wins over PATH so a user can pick one."""
    env = os.environ.get("ROUTENLP_CHROMIUM")
    if env:
        found = shutil.which(env)
        if found is None:
            raise BrowserError(f"ROUTENLP_CHROMIUM={env!r} is not an executable", hint=INSTALL_HINT)
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserError(f"no headless browser found on PATH (looked for {', '.join(BROWSERS)})", hint=INSTALL_HINT)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400,
               *, timeout: float = 90.0) -> Path:
    """A width x height PNG of the page as headless Chromium draws it (top of the page).

    A throwaway profile directory keeps parallel runs from fighting over one profile lock."""
    src = Path(html_path).resolve()
    if not src.is_file():
        raise DataError(f"no HTML file at {src}")
    out = Path(png_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    binary = find_chromium()
    with tempfile.TemporaryDirectory(prefix="routenlp-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
               src.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise BrowserError(f"{binary} did not finish the screenshot of {src} within {timeout:.0f} s") from err
        except OSError as err:
            raise BrowserError(f"could not run {binary}: {err}", hint=INSTALL_HINT) from err
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        msg = f"{binary} exited {proc.returncode} without writing {out}"
        raise BrowserError(msg + (f":\n{tail}" if tail else ""))
    return out


def _pixels(png_path: str | Path) -> np.ndarray:
    """H x W array of packed RGB integers (alpha dropped) - one value per colour."""
    from matplotlib import image  # the `report` extra

    p = Path(png_path)
    if not p.is_file():
        raise DataError(f"no PNG file at {p}")
    img = image.imread(p)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    rgb = img[..., :3]
    if rgb.dtype.kind == "f":
        rgb = np.rint(rgb * 255)
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _content_mask(png_path: str | Path) -> np.ndarray:
    px = _pixels(png_path)
    values, counts = np.unique(px, return_counts=True)
    return px != values[np.argmax(counts)]


def nonblank(png_path: str | Path) -> float:
    """The fraction of pixels that differ from the dominant (background) colour: ~0 for a
    blank or error page, a few percent for a page of tables and plots."""
    mask = _content_mask(png_path)
    return float(mask.mean()) if mask.size else 0.0


def content_height(png_path: str | Path) -> int:
    """How far down the picture something is drawn: 1 + the last pixel row that differs
    from the background (0 for a blank picture) - a page cut short stays small."""
    rows = np.flatnonzero(_content_mask(png_path).any(axis=1))
    return int(rows[-1]) + 1 if rows.size else 0
