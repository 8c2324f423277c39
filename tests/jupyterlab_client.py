"""Drive a real JupyterLab with a real browser, as a student would (used by test_jupyterlab.py).

`LabServer` starts JupyterLab on loopback (random free port, token auth) serving a folder of
notebook copies, with its settings, workspaces and runtime files in a temporary folder. `Lab`
drives Debian's headless Chromium (``/usr/bin/chromium``) with Playwright: open a notebook,
*Run > Run All Cells*, wait until every code cell has run, then report what the page shows —
error outputs, rendered figures, sliders — and move a slider with the keyboard.

    with LabServer(root) as server, Lab(server) as lab:
        page = lab.open("02_encoder_relation_net.ipynb")
        lab.run_all(page)
        print(lab.errors(page), lab.figures(page))
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Chromium on a machine without network or a sandbox: no background traffic, no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# JupyterLab user settings: every cell stays in the page (no virtual scrolling), no news
# or update pop-ups, no autosave into the served copies.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabServer:
    """JupyterLab serving ``root_dir`` on 127.0.0.1 with a random token, until closed."""

    def __init__(self, root_dir: Path, startup_timeout: float = 120.0):
        self.root_dir = Path(root_dir)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._home = Path(tempfile.mkdtemp(prefix="leo-lab-"))
        self.log_path = self._home / "jupyterlab.log"
        self._process: subprocess.Popen | None = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # as in a learner's JupyterLab: progress bars on, matplotlib's inline backend
        # (.ci/run exports TQDM_DISABLE=1 and MPLBACKEND=Agg, which would hide both)
        for name in ("TQDM_DISABLE", "MPLBACKEND"):
            env.pop(name, None)
        for name in ("config", "data", "runtime", "ipython", "settings", "workspaces"):
            (self._home / name).mkdir()
        env.update(
            JUPYTER_CONFIG_DIR=str(self._home / "config"),
            JUPYTER_RUNTIME_DIR=str(self._home / "runtime"),
            IPYTHONDIR=str(self._home / "ipython"),
            JUPYTERLAB_SETTINGS_DIR=str(self._home / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self._home / "workspaces"),
            # the kernel must be this environment's Python
            PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        )
        for name, settings in LAB_SETTINGS.items():
            path = self._home / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        return env

    def start(self) -> LabServer:
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]  # no PyPI look-ups
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI containers run as root
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(
            cmd,
            env=self._environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/api/status?token={self.token}", timeout=5
                ) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"JupyterLab did not answer within {self.startup_timeout} s")

    def shutdown_kernels(self) -> None:
        """Shut down every running kernel (REST API), e.g. after closing a notebook's page."""
        with urllib.request.urlopen(f"{self.url}/api/kernels?token={self.token}") as response:
            kernels = json.load(response)
        for kernel in kernels:
            request = urllib.request.Request(
                f"{self.url}/api/kernels/{kernel['id']}?token={self.token}", method="DELETE"
            )
            urllib.request.urlopen(request).close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # JupyterLab shuts its kernels down on SIGTERM
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None:
            self._log.close()
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Figure:
    cell: int  # index among the notebook's cells
    width: float  # rendered size in CSS pixels
    height: float
    natural_width: int  # decoded image size: 0 when the image failed to load


# JavaScript run in the page. Cells are `.jp-Notebook .jp-Cell`, in notebook order.
_JS_PROGRESS = """() => {
  const prompts = [...document.querySelectorAll(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')];
  return prompts.map(p => p.textContent.trim());
}"""
_JS_ERRORS = """() => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')];
  const found = [];
  cells.forEach((cell, i) => {
    cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        + ', .jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
        + ', .jp-OutputArea-executeResult .jp-mod-error, .lm-Widget.jp-mod-error'
        + ', .jupyter-widgets.jp-mod-error, .jupyter-widgets-view-error')
      .forEach(el => found.push([i, el.innerText.slice(0, 400)]));
  });
  return found;
}"""
_JS_FIGURES = """() => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')];
  const found = [];
  cells.forEach((cell, i) => {
    cell.querySelectorAll('.jp-OutputArea img').forEach(img => {
      const box = img.getBoundingClientRect();
      found.push([i, box.width, box.height, img.naturalWidth]);
    });
  });
  return found;
}"""
_JS_KERNEL_IDLE = r"""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
  .some(item => /\|\s*Idle$/.test(item.innerText.trim()))"""
# What the outputs show, minus the controls: every image and widget text but slider readouts.
_JS_OUTPUT_STATE = """() => {
  const root = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  const images = [...root.querySelectorAll('.jp-OutputArea img')].map(img => img.src);
  const texts = [...root.querySelectorAll(
      '.widget-output, .widget-html-content, .widget-html, .widget-textarea, .widget-text')]
    .map(el => el.innerText);
  return JSON.stringify([images, texts]);
}"""


class Lab:
    """A headless Chromium talking to a `LabServer` (Playwright, sync API)."""

    def __init__(self, server: LabServer, screenshot_dir: Path | None = None):
        self.server = server
        self.screenshot_dir = screenshot_dir

    def __enter__(self) -> Lab:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        return self

    def __exit__(self, *exc) -> None:
        self.browser.close()
        self._playwright.stop()

    def open(self, notebook: str, timeout_s: float = 120.0):
        """A new page with ``notebook`` open and its kernel started and idle."""
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(timeout_s * 1000)
        page.goto(f"{self.server.url}/lab/tree/{notebook}?reset&token={self.server.token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        self._wait_idle(page, timeout_s)
        return page

    def _wait_idle(self, page, timeout_s: float) -> None:
        """Wait for the status bar's "<kernel> | Idle" (a kernel connected, nothing running)."""
        page.wait_for_function(_JS_KERNEL_IDLE, timeout=timeout_s * 1000)

    def _prompts(self, page) -> list[str]:
        return page.evaluate(_JS_PROGRESS)

    def run_all(self, page, timeout_s: float = 600.0) -> None:
        """Run > Run All Cells from the menu bar; returns when every code cell has run."""
        for _attempt in range(3):  # the menu can be clicked before the notebook has focus
            page.locator(".jp-NotebookPanel .jp-Cell").first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            started = time.monotonic() + 15
            while time.monotonic() < started and all(p == "[ ]:" for p in self._prompts(page)):
                page.wait_for_timeout(250)
            if not all(p == "[ ]:" for p in self._prompts(page)):
                break
        deadline = time.monotonic() + timeout_s
        while True:
            prompts = self._prompts(page)
            if prompts and all(p[1:-2].strip().isdigit() for p in prompts):
                break
            if time.monotonic() > deadline:
                self.screenshot(page, "run-all-timeout")
                raise TimeoutError(f"cells still to run after {timeout_s} s: {prompts}")
            page.wait_for_timeout(500)
        self._wait_idle(page, 60)
        page.wait_for_timeout(500)  # let the last outputs and images lay out

    def errors(self, page) -> list[tuple[int, str]]:
        """(cell index, text) of every error or stderr output shown."""
        return [tuple(e) for e in page.evaluate(_JS_ERRORS)]

    def figures(self, page) -> list[Figure]:
        """Every image in an output area (matplotlib figures, image widgets)."""
        return [Figure(*f) for f in page.evaluate(_JS_FIGURES)]

    def output_state(self, page) -> str:
        """A fingerprint of what the outputs show (images and widget texts, not controls)."""
        return page.evaluate(_JS_OUTPUT_STATE)

    def sliders(self, page):
        """The slider handles of every ipywidgets slider on show, as Playwright locators."""
        handles = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .noUi-handle")
        return [handles.nth(i) for i in range(handles.count())]

    def nudge(self, page, handle, key: str = "ArrowRight", settle_s: float = 30.0) -> bool:
        """Focus a slider handle, press ``key``; True if the outputs changed within
        ``settle_s`` (the kernel has to recompute and send the new picture)."""
        before = self.output_state(page)
        handle.scroll_into_view_if_needed()
        handle.focus()
        page.keyboard.press(key)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            page.wait_for_timeout(250)
            if self.output_state(page) != before:
                self._wait_idle(page, settle_s)
                return True
        return False

    def close(self, page) -> None:
        """Close the page and shut its kernel down."""
        page.close()
        self.server.shutdown_kernels()

    def screenshot(self, page, name: str, element=None) -> Path | None:
        """Save the window as ``<screenshot_dir>/<name>.png``, scrolled to ``element`` if given
        (a Playwright locator)."""
        if self.screenshot_dir is None:
            return None
        if element is not None:
            element.scroll_into_view_if_needed()
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path))
        return path
