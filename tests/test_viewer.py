"""ns-viewer on loopback, looked at by a real (headless) browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ns_bin

pytest.importorskip("nerfstudio")
pytestmark = pytest.mark.slow  # end to end through the ns-* commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ns-viewer exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"ns-viewer did not listen on 127.0.0.1:{port} within {timeout}s:\n{log.read_text()[-3000:]}")


def screenshot(url: str, out: Path, budget_ms: int) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1000,700", f"--virtual-time-budget={budget_ms}",
                f"--screenshot={out}", url,
            ],
            capture_output=True, text=True, timeout=180,
        )


needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="Debian's chromium is not installed (.ci/setup installs it)",
)


@needs_chromium
def test_viewer_serves_a_rendered_frame_to_a_browser(runs, tmp_path):
    check_viewer_shows_the_scene(runs["resumed"] / "config.yml", tmp_path)


def check_viewer_shows_the_scene(config: Path, tmp_path: Path, name: str = "viewer.png") -> None:
    """ns-viewer on 127.0.0.1 with ``config``; a headless browser's screenshot shows a rendered scene."""
    port = free_port()
    log = tmp_path / "viewer.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [ns_bin("ns-viewer"), "--load-config", str(config),
             "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        wait_for_port(port, proc, log)
        png = tmp_path / "viewer.png"
        done = screenshot(f"http://127.0.0.1:{port}", png, budget_ms=20000)
        assert png.exists(), done.stderr[-2000:]
        from PIL import Image

        img = np.asarray(Image.open(png).convert("RGB")).astype(np.float32)
        assert img.shape[0] >= 600 and img.shape[1] >= 900
        # Not blank: many distinct colours and real variation across the page.
        colours = np.unique(img.reshape(-1, 3), axis=0).shape[0]
        assert colours > 200 and img.std() > 10, (colours, img.std())
        # The 3D canvas (left of the control panel) shows the rendered scene, not a flat background.
        canvas = img[100:600, 50:500]
        assert canvas.std() > 10 and np.unique(canvas.reshape(-1, 3), axis=0).shape[0] > 100
        if os.environ.get("UNISEM_TEST_ARTIFACTS"):  # keep the screenshot for a person to look at
            shutil.copy(png, Path(os.environ["UNISEM_TEST_ARTIFACTS"]) / name)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
