"""The dashboard end to end: a real daemon starts a real gunicorn; log in with
`ssh ... dashboard:login`, read pages and the API over HTTP, restart an app
with a CSRF token, and never see a config value. Then the same in headless
Chromium (Debian's chromium + chromium-driver), with a screenshot in
tests/artifacts/."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import make_repo, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.browser]

SECRET = "dash-secret-7f3a9c1e5b"
ARTIFACTS = Path(__file__).parent / "artifacts"


def pushed_node(node_factory, tmp_path: Path):
    node = node_factory("docker")
    work = make_repo(tmp_path, "procfile-two")
    r = node.git(work, "push", node.remote("dashapp"), "main")
    assert r.returncode == 0, r.stderr
    assert node.ssh("config:set", "dashapp", f"API_TOKEN={SECRET}").returncode == 0
    return node


def login_link(node) -> str:
    r = node.ssh("dashboard:login")
    assert r.returncode == 0, r.stderr
    link = r.stdout.split()[-1]  # the token is the last word
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[\w-]+", link), r.stdout
    return link


def wait_dashboard(base: str) -> None:
    def answers() -> bool:
        try:
            urllib.request.urlopen(base + "/bye", timeout=2).close()
            return True
        except OSError:
            return False

    wait_for(answers, what="the dashboard's gunicorn", timeout=60)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


def test_dashboard_over_http(node_factory, tmp_path: Path):
    node = pushed_node(node_factory, tmp_path)
    link = login_link(node)
    base = link.split("/login")[0]
    token = link.rsplit("=", 1)[1]
    wait_dashboard(base)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)

    seen: list[str] = []

    def get(path: str, headers: dict[str, str] | None = None) -> str:
        req = urllib.request.Request(base + path, headers=headers or {})
        with opener.open(req, timeout=30) as resp:
            text = resp.read().decode()
        seen.append(text)
        return text

    # The link sets the session cookie, once.
    try:
        opener.open(link, timeout=30)
        raise AssertionError("the login link did not redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 303
        set_cookie = e.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    session = next(c.value for c in jar if c.name == "pc_session")
    with pytest.raises(urllib.error.HTTPError) as again:
        urllib.request.urlopen(link, timeout=30)
    assert again.value.code == 403

    page = get("/")
    assert "dashapp" in page and "running" in page and "web.1" in page
    detail = get("/apps/dashapp")
    assert "API_TOKEN" in detail and "Deploy" in detail
    get("/nodes")

    bearer = {"Authorization": f"Bearer {session}"}
    apps = json.loads(get("/api/apps", bearer))
    assert [a["name"] for a in apps] == ["dashapp"]
    assert apps[0]["deployed_by"] and apps[0]["instances"]
    info = json.loads(get("/api/apps/dashapp", bearer))
    assert "API_TOKEN" in info["config"] and info["info"]["release"] == "v2"
    json.loads(get("/api/apps/dashapp/logs?tail=20", bearer))
    json.loads(get("/api/nodes", bearer))

    # Restart, as the page does: a POST with the page's CSRF token.
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', detail).group(1)
    restart = base + "/apps/dashapp/restart"
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(urllib.request.Request(restart, data=b"csrf=bad", method="POST"), timeout=30)
    assert refused.value.code == 403
    before = {r["process"]: r["since"] for r in info["ps"]}
    time.sleep(1.1)  # `since` has one-second precision
    with pytest.raises(urllib.error.HTTPError) as done:  # 303 back to the app's page
        opener.open(
            urllib.request.Request(restart, data=f"csrf={csrf}".encode(), method="POST"),
            timeout=60,
        )
    assert done.value.code == 303 and "restarted" in done.value.headers["Location"]

    def restarted() -> bool:
        ps = json.loads(get("/api/apps/dashapp", bearer))["ps"]
        return all(r["state"] == "up" and r["since"] != before[r["process"]] for r in ps)

    wait_for(restarted, what="the restarted instances", timeout=60)
    page = get("/apps/dashapp?done=restarted")
    events = page.split('id="events"', 1)[1].split("</table>", 1)[0]
    assert "ps:restart" in events and "config:" in events  # the audit trail, newest first
    assert events.index("ps:restart") < events.index("config:")
    newest = json.loads(get("/api/apps/dashapp/events?n=5", bearer))["events"][0]
    assert newest["what"] == "ps:restart" and newest["user"]
    assert 'id="resources"' in page and 'id="sharing"' in page
    nodes = get("/nodes")
    assert '<svg id="usage"' in nodes or 'id="usage-empty"' in nodes
    assert json.loads(get("/api/nodes", bearer))["usage"]["every"] == 60

    for text in seen:
        assert SECRET not in text
        assert session not in text and token not in text
    log = node.log.read_text()
    assert SECRET not in log and token not in log and session not in log
    assert '"GET /login' in log  # gunicorn's access log: the path, never the query

    # A gunicorn that dies is started again; it stops with the node.
    first = gunicorn_pids(node)[-1]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(gunicorn_pids(node)) == 2, what="a new gunicorn", timeout=30)
    wait_dashboard(base)
    assert json.loads(get("/api/apps", bearer))[0]["name"] == "dashapp"  # sessions kept
    second = gunicorn_pids(node)[-1]
    node.stop()
    wait_for(lambda: not os.path.exists(f"/proc/{second}"), what="gunicorn to stop", timeout=15)


def gunicorn_pids(node) -> list[int]:
    return [int(p) for p in re.findall(r"gunicorn pid (\d+)", node.log.read_text())]


def browser_or_fail() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if chromium and driver:
        return chromium, driver
    why = "headless Chromium needs `apt-get install chromium chromium-driver` and selenium"
    if os.environ.get("CI") == "true" or os.environ.get("PC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests are required here, but {why}", pytrace=False)
    pytest.skip(why)


def test_dashboard_in_chromium(node_factory, tmp_path: Path):
    chromium, driver_path = browser_or_fail()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    node = pushed_node(node_factory, tmp_path)
    link = login_link(node)
    wait_dashboard(link.split("/login")[0])

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="pc-chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(link)
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#apps tbody tr")))
        assert "dashapp" in row.text and "running" in row.text
        assert browser.get_cookie("pc_session")["httpOnly"] is True
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly
        browser.find_element(By.LINK_TEXT, "dashapp").click()
        wait.until(ec.presence_of_element_located((By.ID, "restart")))
        assert "API_TOKEN" in browser.page_source and SECRET not in browser.page_source
        browser.find_element(By.ID, "restart").click()
        wait.until(ec.alert_is_present()).accept()  # the confirm()
        done = wait.until(ec.presence_of_element_located((By.ID, "done")))
        assert done.text == "restarted"

        def restart_in_events(b) -> bool:
            rows = b.find_elements(By.CSS_SELECTOR, "#events tbody tr")
            if rows and "ps:restart" in rows[0].text:  # the newest first
                return True
            b.refresh()  # recorded after the page was drawn: look again
            return False

        wait.until(restart_in_events)
        wait.until(lambda b: "up" in b.find_element(By.ID, "ps").text)
        # The log follows while the page is open: a line written now shows, no reload.
        logs = browser.find_element(By.ID, "logs")
        wait.until(lambda b: "worker up" in logs.text)
        before = logs.text.count("worker up")
        assert node.ssh("ps:restart", "dashapp", "worker").returncode == 0
        wait.until(lambda b: logs.text.count("worker up") > before)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-app.png"))
        assert SECRET not in browser.page_source
    finally:
        browser.quit()
