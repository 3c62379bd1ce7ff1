"""Open a report page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, set
up by ``deploy/local/chromium``) and say what a viewer would get: the console messages, every
network request the page made, the embedded document as the page's own JavaScript reads it, the
number of Plotly charts drawn, and a screenshot.

Selenium 4 drives the system chromedriver (no browser or driver download: Selenium Manager is not
used when the driver's path is given). Console and network come from ``goog:loggingPrefs``: the
``browser`` log and the ``performance`` log (DevTools ``Network.requestWillBeSent`` events).

``python -m pipeline.htmlreport.browser REPORT.html --screenshot docs/report.png`` is what
``make docs-report`` runs."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "chromium"


class BrowserMissing(RuntimeError):
    pass


@dataclass
class PageVisit:
    url: str
    console: list[dict]  # {"level", "message"} of every browser console entry
    requests: list[str]  # URLs of every request the page made, the page itself included
    data: dict  # the embedded #tailsift-data document, parsed by the page's JavaScript
    charts: int  # Plotly charts drawn (elements with the .main-svg Plotly renders)
    screenshot_png: bytes

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.console if e["level"] in ("SEVERE", "ERROR")]

    @property
    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if u != self.url]


def find_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise BrowserMissing(
            f"chromium ({chromium or 'missing'}) and chromedriver ({driver or 'missing'}) are needed: "
            f"run {SETUP_SCRIPT} (apt-get install -y chromium chromium-driver, as root)"
        )
    return chromium, driver


def visit(path: str | Path, width: int = 1280, height: int = 2400, timeout: float = 60.0) -> PageVisit:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        # no background traffic of the browser's own (updates, safe browsing, …) in the request log
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    try:
        url = Path(path).resolve().as_uri()
        browser.set_page_load_timeout(timeout)
        browser.get(url)
        # Plotly draws on load; wait until every figure div has its SVG (a condition, not a sleep)
        deadline = time.monotonic() + timeout
        script = (
            "const d = Array.from(document.querySelectorAll('.plotly-graph-div'));"
            "return [d.length, d.filter(x => x.querySelector('.main-svg')).length];"
        )
        while True:
            total, drawn = browser.execute_script(script)
            if drawn == total or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        data = browser.execute_script("return JSON.parse(document.getElementById('tailsift-data').textContent);")
        png = browser.get_screenshot_as_png()
        console = [{"level": e["level"], "message": e["message"]} for e in browser.get_log("browser")]
        requests = []
        for entry in browser.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                requests.append(msg["params"]["request"]["url"])
        return PageVisit(url, console, requests, data, drawn, png)
    finally:
        browser.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="an HTML report file")
    p.add_argument("--screenshot", required=True, help="write the PNG here")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    v = visit(args.report, args.width, args.height)
    Path(args.screenshot).write_bytes(v.screenshot_png)
    print(f"{args.screenshot}: {v.charts} charts, {len(v.errors)} console errors, {len(v.foreign_requests)} requests")
    return 1 if v.errors or v.foreign_requests else 0


if __name__ == "__main__":
    sys.exit(main())
