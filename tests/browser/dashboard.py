#!/usr/bin/python3
"""Drives the locald dashboard in a real headless Chromium through WebDriver
(Debian's python3-selenium and chromium-driver) while a terminal-side
`locald-ctl` changes things, as a person with a browser and a terminal would.

Run by tests/tests/dashboard.rs, which starts the bus, journald, the daemon,
the project and `locald-ctl dashboard`, and passes:
  DASH_URL      the URL the dashboard printed (with #token=…)
  DASH_OUT      where the screenshots go
  DASH_PROJECT  the project's name
  DASH_DIR      the project's directory (cwd for locald-ctl)
  DASH_CTL      the locald-ctl binary
  LOCALD_BUS_ADDRESS  the private bus
Each check prints `ok: …`; the first failure raises and exits non-zero.
"""

import json
import os
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

URL = os.environ["DASH_URL"]
OUT = os.environ["DASH_OUT"]
PROJECT = os.environ["DASH_PROJECT"]
DIR = os.environ["DASH_DIR"]
CTL = os.environ["DASH_CTL"]


def ctl(*args, check=True):
    r = subprocess.run([CTL, *args], cwd=DIR, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"locald-ctl {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r


def status():
    return {s["name"]: s for s in json.loads(ctl("status", "--json").stdout)[0]["services"]}


def wait(what, f, timeout=15.0, every=0.05):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = f()
        except Exception as e:  # the DOM may be mid-update
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def ok(what):
    print(f"ok: {what}", flush=True)


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={os.path.join(OUT, 'chromium-profile')}",
        "--window-size=1280,800",
    ]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


JS_ROW = """
const [project, service] = arguments;
const card = document.querySelector(`article.project[data-project="${project}"]`);
if (!card) return null;
const row = card.querySelector(`tr.svc[data-service="${service}"]`);
const builds = card.querySelector(`tr.svc-builds[data-service="${service}"]`);
if (!row) return null;
const progress = builds.querySelector('.progress');
return {
  state: row.querySelector('td.state .badge').textContent,
  pid: row.querySelector('td.pid').textContent,
  build: row.querySelector('td.build').textContent,
  progress: progress.hidden ? null : progress.textContent,
  history: [...builds.querySelectorAll('li.hist')].map(li => li.textContent),
};
"""


def row(d, service):
    return d.execute_script(JS_ROW, PROJECT, service)


def lines(d):
    return d.execute_script(
        """return [...document.querySelectorAll('#lines .line')].filter(l => !l.hidden)
             .map(l => ({phase: l.dataset.phase, stream: l.dataset.stream, service: l.dataset.service,
                         text: l.querySelector('.msg').textContent}));"""
    )


def shot(d, name):
    path = os.path.join(OUT, name)
    if not d.save_screenshot(path):
        raise AssertionError(f"no screenshot {path}")
    ok(f"screenshot {path}")


def main():
    d = browser()
    try:
        run(d)
    finally:
        d.quit()


def run(d):
    d.get(URL)
    for s in ["web", "db"]:
        wait(f"{s} running on the page", lambda: (row(d, s) or {}).get("state") in ("running", "healthy"))
    st = status()
    for s in ["web", "db"]:
        r = row(d, s)
        assert r["state"] == st[s]["state"], (r, st[s])
        assert r["pid"] == str(st[s]["main_pid"]), (r, st[s])
    ok("services listed with the states and pids of locald-ctl status")
    # The first build folded into one ✓ line.
    wait("web's first build in the history", lambda: len(row(d, "web")["history"]) == 1)
    assert row(d, "web")["history"][0].startswith("✓"), row(d, "web")
    shot(d, "running.png")

    # A restart from the terminal shows without a reload within 1 s.
    d.execute_script("window.__sameDocument = 42;")
    before = row(d, "web")
    started = time.monotonic()
    p = subprocess.Popen([CTL, "restart", "web"], cwd=DIR, stdout=subprocess.DEVNULL)
    wait(
        "web's badge or pid to change",
        lambda: (lambda r: r["state"] != before["state"] or r["pid"] != before["pid"])(row(d, "web")),
        timeout=1.0,
        every=0.02,
    )
    took = time.monotonic() - started
    assert d.execute_script("return window.__sameDocument;") == 42, "the page reloaded"
    ok(f"restart seen on the page in {took:.2f}s, without a reload")
    assert p.wait(timeout=60) == 0
    wait("web running again", lambda: row(d, "web")["state"] in ("running", "healthy"))

    # A build with several steps: a live bar, then one ✓ line.
    n = len(row(d, "web")["history"])
    p = subprocess.Popen([CTL, "build", "web", "--force"], cwd=DIR, stdout=subprocess.DEVNULL)
    text = wait("the build's progress bar", lambda: row(d, "web")["progress"])
    assert text.startswith("Building: step ") and "/3 – " in text, text
    wait("the running step", lambda: "running" in (row(d, "web")["progress"] or ""))
    shot(d, "building.png")
    ok(f"progress shown: {text!r}")
    assert p.wait(timeout=60) == 0
    r = wait("the bar to fold into the history", lambda: (lambda r: r if r["progress"] is None and len(r["history"]) == n + 1 else None)(row(d, "web")))
    assert r["history"][0].startswith("✓"), r
    assert "succeeded" in r["history"][0], r
    ok(f"the bar folded into one line: {r['history'][0]!r}")

    # A failing build: ✗ in the history, its lines under Build.
    open(os.path.join(DIR, "fail"), "w").close()
    r = ctl("build", "web", "--force", check=False)
    assert r.returncode == 1, r
    r = wait("a ✗ line", lambda: (lambda r: r if r["history"] and r["history"][0].startswith("✗") else None)(row(d, "web")))
    ok(f"failed build shown: {r['history'][0]!r}")
    d.find_element(By.CSS_SELECTOR, f'article[data-project="{PROJECT}"] tr.svc[data-service="web"] button.sname').click()
    d.find_element(By.ID, "phase-build").click()
    ls = wait("the failed build's lines under Build", lambda: (lambda ls: ls if any("broken build" in l["text"] for l in ls) else None)(lines(d)))
    assert all(l["phase"] == "build" for l in ls), ls
    assert all(l["service"] == "web" for l in ls), ls
    err = [l for l in ls if "broken build" in l["text"]]
    assert err[-1]["stream"] == "stderr", err
    assert d.execute_script(
        "return [...document.querySelectorAll('#lines .line.stderr .err')].length > 0;"
    ), "stderr is marked"
    ok(f"Build shows only build lines ({len(ls)}), stderr marked")
    shot(d, "failed.png")

    # Runtime: only run lines; markup in a line is text; ANSI colours rendered.
    d.find_element(By.ID, "phase-run").click()
    ls = wait("runtime lines", lambda: (lambda ls: ls if any("<script>" in l["text"] for l in ls) else None)(lines(d)))
    assert all(l["phase"] == "run" for l in ls), ls
    ok(f"Runtime shows only run lines ({len(ls)})")
    assert any(l["text"] == "<script>alert('x')</script>" for l in ls), ls
    assert d.execute_script("return document.querySelectorAll('#lines script').length;") == 0
    assert d.execute_script("return window.__xss === undefined;")
    ok("a <script> line shows as text and runs nothing")
    red = d.execute_script(
        "return [...document.querySelectorAll('#lines .msg span.fg1.b')].map(s => s.textContent);"
    )
    assert "red bold" in red, red
    assert not any("\x1b" in l["text"] for l in ls), "escape codes are not shown raw"
    ok("ANSI colours rendered as styled text")

    # Both: build and run lines together; search filters them.
    d.find_element(By.ID, "phase-both").click()
    ls = wait("both phases", lambda: (lambda ls: ls if {l["phase"] for l in ls} == {"build", "run"} else None)(lines(d)))
    search = d.find_element(By.ID, "search")
    search.send_keys("broken")
    ls = wait("search results", lambda: (lambda ls: ls if ls and all("broken" in l["text"].lower() for l in ls) else None)(lines(d)))
    search.send_keys(Keys.BACKSPACE * len("broken"))
    wait("every line back", lambda: len(lines(d)) > len(ls))
    ok("Both shows both phases; search narrows the lines")

    # Older lines load on scroll, page by page, in order, without gaps.
    d.find_element(By.CSS_SELECTOR, f'article[data-project="{PROJECT}"] tr.svc[data-service="db"] button.sname').click()
    wait("db's newest page", lambda: (lambda ls: ls if len(ls) >= 200 and ls[-1]["text"] == "db ready" else None)(lines(d)))
    first = len(lines(d))
    for _ in range(10):
        d.execute_script("document.getElementById('lines').scrollTop = 0;")
        time.sleep(0.3)
        if len(lines(d)) >= 451:
            break
    texts = [l["text"] for l in lines(d)]
    assert texts == [f"db line {i}" for i in range(1, 451)] + ["db ready"], texts[:5]
    ok(f"older lines loaded on scroll: {first} then {len(texts)}, in order")

    # Keyboard: 2 is Build, 3 is Both, / goes to the search box.
    d.find_element(By.TAG_NAME, "body").send_keys("2")
    wait("Build pressed", lambda: d.find_element(By.ID, "phase-build").get_attribute("aria-pressed") == "true")
    d.find_element(By.TAG_NAME, "body").send_keys("3")
    wait("Both pressed", lambda: d.find_element(By.ID, "phase-both").get_attribute("aria-pressed") == "true")
    d.find_element(By.TAG_NAME, "body").send_keys("/")
    assert d.switch_to.active_element.get_attribute("id") == "search"
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    ok("keyboard shortcuts work")

    # Stop by a click, checked with locald-ctl status.
    d.find_element(
        By.XPATH,
        f'//article[@data-project="{PROJECT}"]//tr[@data-service="db"]//button[text()="Stop"]',
    ).click()
    wait("db stopped per locald-ctl status", lambda: status()["db"]["state"] == "stopped", timeout=20)
    wait("db stopped on the page", lambda: row(d, "db")["state"] == "stopped")
    ok("Stop click stopped the service")

    # A named error comes back from the daemon and is shown.
    with open(os.path.join(DIR, "locald.toml"), "a") as f:
        f.write("\n[services.web.bogus]\n")
    d.find_element(By.XPATH, f'//article[@data-project="{PROJECT}"]//button[text()="Reload"]').click()
    name = wait("the error banner", lambda: d.find_element(By.ID, "error-name").text if d.find_element(By.ID, "error").is_displayed() else None)
    report = d.find_element(By.ID, "error-report").text
    assert name == "ConfigInvalid", name
    assert "locald.toml:" in d.find_element(By.ID, "error-message").text, d.find_element(By.ID, "error-message").text
    ok(f"config error shown: {d.find_element(By.ID, 'error-message').text!r} / report {len(report)} chars")
    shot(d, "error.png")

    # Narrow window and dark mode.
    d.find_element(By.ID, "theme").click()
    d.set_window_size(420, 900)
    shot(d, "narrow-dark.png")
    width = d.execute_script("return document.documentElement.scrollWidth;")
    inner = d.execute_script("return window.innerWidth;")
    assert width <= inner + 1, f"no sideways scrolling when narrow: {width} > {inner}"
    ok("narrow window without sideways scrolling")

    # Down takes a second click; the project leaves the page and the daemon.
    d.find_element(By.ID, "error-close").click()
    down = d.find_element(By.XPATH, f'//article[@data-project="{PROJECT}"]//button[text()="Down"]')
    down.click()
    assert down.text == "Confirm down", down.text
    time.sleep(0.3)
    assert status(), "one click does nothing"
    down.click()
    wait("the project gone from the page", lambda: d.execute_script(
        f'return document.querySelector(\'article[data-project="{PROJECT}"]\') === null;'))
    r = ctl("status", "--json", check=False)
    assert r.returncode != 0 and "is not up" in r.stderr, r
    assert d.find_element(By.ID, "empty").is_displayed()
    ok("Down (two clicks) took the project down")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
