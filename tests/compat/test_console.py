"""The web console (`/console/`) in a real browser: Debian's Chromium driven by Selenium through
Debian's ChromeDriver, against the session's server, with a real MQTT device (paho-mqtt over TLS
with its own JWT) on the other side.

What a user does, in order: sign in with the admin token; create a registry and a device (pasting
its public key); watch the device's telemetry arrive live while it publishes; push a config and
see the device's acknowledgement; send a command the device receives; find devices by id prefix
and page through them; sign in again with a viewer's token and find the actions it may not take
disabled. A screenshot of each page is kept in $CONSOLE_SCREENSHOTS (default
target/console-screenshots).

Without chromium and chromedriver (scripts/install-browser.sh installs both) the tests skip, and
fail under CI=true.
"""

from __future__ import annotations

import base64
import os
import pathlib
import shutil
import threading
import time

import pytest

from compat_support import (
    DEVICE_TIMEOUT_S,
    LOCATION,
    MqttDevice,
    create_jwt,
    fresh_project,
    location_path,
    make_device_key,
    unique,
)

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = pathlib.Path(os.environ.get("CONSOLE_SCREENSHOTS", ROOT / "target" / "console-screenshots"))
WAIT_S = 15


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"{', '.join(missing)} not installed (scripts/install-browser.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


class Console:
    """The browser, with the few moves the tests make: fill a labelled field, press a button,
    wait for a heading or a text, keep a screenshot."""

    def __init__(self, driver, base_url: str):
        self.d = driver
        self.base = base_url

    def open(self, fragment: str = "") -> None:
        self.d.get(f"{self.base}/console/{fragment}")

    def go(self, fragment: str) -> None:
        self.d.execute_script("location.hash = arguments[0]", fragment)

    def wait(self, condition, timeout: float = WAIT_S):
        return WebDriverWait(self.d, timeout).until(condition)

    def heading(self, text: str) -> None:
        self.wait(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), text))

    def text(self, text: str, timeout: float = WAIT_S) -> None:
        self.wait(lambda d: text in d.find_element(By.TAG_NAME, "main").text, timeout)

    def notice(self, text: str) -> None:
        self.wait(EC.text_to_be_present_in_element((By.ID, "notice"), text))

    def fill(self, selector: str, value: str) -> None:
        el = self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))
        el.clear()
        el.send_keys(value)

    def set_value(self, selector: str, value: str) -> None:
        """For long multi-line text (a PEM key), which send_keys types slowly."""
        el = self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))
        self.d.execute_script("arguments[0].value = arguments[1]", el, value)

    def button(self, label: str):
        return self.wait(EC.presence_of_element_located((By.XPATH, f"//button[normalize-space(.)='{label}']")))

    def press(self, label: str) -> None:
        b = self.wait(EC.element_to_be_clickable((By.XPATH, f"//button[normalize-space(.)='{label}']")))
        b.click()

    def shot(self, name: str) -> None:
        """The whole page, not only what fits the window."""
        png = self.d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(png["data"]))

    def sign_in(self, token: str, project: str) -> None:
        self.open("#/")
        self.d.execute_script("sessionStorage.clear()")
        self.d.refresh()
        self.heading("Sign in")
        self.fill("input[name=token]", token)
        self.fill("input[name=project]", project)
        self.fill("input[name=location]", LOCATION)
        self.press("Sign in")
        self.heading("Overview")


@pytest.fixture(scope="module")
def world(server, rest, tmp_path_factory):
    """A fresh project, and a device key whose public half the test pastes into the console."""
    key = make_device_key(tmp_path_factory.mktemp("console-keys"), "ES256")
    return {"project": fresh_project(), "key": key, "registry": unique("reg"), "device": unique("dev")}


def test_a_user_runs_a_device_from_the_console(server, rest, browser, world):
    c = Console(browser, server.base_url)
    project, registry_id, device_id, key = world["project"], world["registry"], world["device"], world["key"]
    topic = f"projects/{project}/topics/telemetry"

    # Sign in: the overview shows the server's figures.
    c.sign_in(server.token, project)
    c.text("Devices connected")
    c.shot("01-overview")
    assert browser.switch_to.active_element.tag_name == "h1", "focus starts at the new page's heading"

    # Create a registry through its form.
    c.go("#/registries")
    c.heading("Registries")
    c.fill("input[name=id]", registry_id)
    c.fill("input[name=eventTopic]", topic)
    c.fill("input[name=stateTopic]", f"projects/{project}/topics/state")
    c.shot("02-registries")
    c.press("Create registry")
    c.heading(f"Registry {registry_id}")
    registry_name = f"{location_path(project)}/registries/{registry_id}"
    stored = rest.ok(rest.get(f"v1/{registry_name}"))
    assert stored["eventNotificationConfigs"] == [{"pubsubTopicName": topic}]

    # Create a device, pasting its public key.
    c.fill("input[name=id]", device_id)
    c.d.find_element(By.CSS_SELECTOR, "select[name=format] option[value=ES256_PEM]").click()
    c.set_value("textarea[name=key]", key.credential["publicKey"]["key"])
    c.shot("03-registry")
    c.press("Create device")
    c.heading(f"Device {device_id}")
    c.text("not connected")

    # The device connects over TLS with its own JWT, and takes config and commands at QoS 1.
    client_id = f"{registry_name}/devices/{device_id}"
    dev = MqttDevice(client_id, create_jwt(project, key.private_key_file, "ES256"), port=server.mqtts_port,
                     ca_certs=server.ca_path)
    assert dev.connect() == 0
    try:
        dev.subscribe(f"/devices/{device_id}/config", 1)
        first = dev.next_message()
        assert first.topic == f"/devices/{device_id}/config"
        dev.subscribe(f"/devices/{device_id}/commands/#", 1)
        c.go(f"#/registries/{registry_id}")
        c.go(f"#/registries/{registry_id}/devices/{device_id}")
        c.heading(f"Device {device_id}")
        c.text("connected")
        assert "not connected" not in c.d.find_element(By.ID, "connection").text

        # Live telemetry: rows appear while the device publishes.
        c.press("Watch telemetry")
        c.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".live [role=status]"), "Following"))
        stop = threading.Event()

        def publish():
            n = 0
            while not stop.is_set():
                dev.publish(f"/devices/{device_id}/events", f"reading-{n} temp=21.5".encode(), qos=1)
                n += 1
                stop.wait(0.3)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        try:
            c.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".live tr.message")) >= 3)
            c.text("temp=21.5")
            rows = c.d.find_elements(By.CSS_SELECTOR, ".live tr.message")
            assert device_id in rows[0].text
            c.shot("04-device-live")
            # Hex view of the same payloads.
            c.d.find_element(By.XPATH, "//label[contains(., 'Show payloads as hex')]/input").click()
            c.wait(lambda d: "72 65 61 64" in d.find_element(By.CSS_SELECTOR, ".live tbody").text)  # "read"
        finally:
            stop.set()
            publisher.join(5)

        # A new config: the device receives it, acknowledges it (paho's PUBACK), the page shows it.
        c.fill("textarea[name=config]", "mode=eco")
        c.press("Send config")
        c.notice("Config version 2 sent")
        got = dev.next_message()
        assert (got.topic, got.payload) == (f"/devices/{device_id}/config", b"mode=eco")
        deadline = time.monotonic() + WAIT_S
        while True:
            c.go(f"#/registries/{registry_id}")
            c.go(f"#/registries/{registry_id}/devices/{device_id}")
            c.heading(f"Device {device_id}")
            c.text("Config versions")
            table = c.d.find_element(By.XPATH, "//table[caption[contains(., 'Config versions')]]").text
            if "acknowledged" in table.split("\n")[2] and "not acknowledged" not in table.split("\n")[2]:
                break
            assert time.monotonic() < deadline, f"version 2 never showed as acknowledged:\n{table}"
            time.sleep(0.5)
        assert "mode=eco" in table
        c.shot("05-device-config")

        # A command reaches the device.
        c.fill("textarea[name=command]", "reboot now")
        c.fill("input[name=subfolder]", "ops")
        c.press("Send command")
        c.notice("Command delivered")
        got = dev.next_message()
        assert (got.topic, got.payload) == (f"/devices/{device_id}/commands/ops", b"reboot now")
        c.shot("06-device-command")

        # Blocking from the console closes the device's connection.
        c.press("Block")
        c.notice("Device blocked")
        assert dev.wait_closed(DEVICE_TIMEOUT_S), "a blocked device is disconnected"
        c.heading(f"Device {device_id}")
        c.button("Unblock")
    finally:
        dev.close()


def test_device_search_and_paging(server, rest, browser, world):
    c = Console(browser, server.base_url)
    project = fresh_project()
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})
    for i in range(55):
        rest.create_device(registry["name"], {"id": f"meter-{i:03d}"})
    for i in range(3):
        rest.create_device(registry["name"], {"id": f"valve-{i}"})
    c.sign_in(server.token, project)
    c.go(f"#/registries/{registry['id']}")
    c.heading(f"Registry {registry['id']}")
    c.text("Devices, page 1")
    rows = lambda: c.d.find_elements(By.XPATH, "//table[caption[starts-with(., 'Devices, page')]]/tbody/tr")  # noqa: E731
    assert len(rows()) == 50
    c.press("Next page")
    c.text("Devices, page 2")
    assert [r.text.split()[0] for r in rows()] == [f"meter-{i:03d}" for i in range(50, 55)] + [f"valve-{i}" for i in range(3)]
    c.press("Previous page")
    c.text("Devices, page 1")
    c.fill("input[name=prefix]", "valve")
    c.press("Search")
    c.wait(lambda d: len(rows()) == 3)
    assert [r.text.split()[0] for r in rows()] == ["valve-0", "valve-1", "valve-2"]
    assert c.button("Next page").get_attribute("disabled") is not None
    c.shot("07-device-search")
    c.fill("input[name=prefix]", "pump")
    c.press("Search")
    c.text("no device id starts with that")


def test_a_viewer_token_sees_but_cannot_act(server, rest, browser, world):
    c = Console(browser, server.base_url)
    project = fresh_project()
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})
    rest.create_device(registry["name"], {"id": "sensor-1"})
    created = rest.ok(rest.post(f"v1/projects/{project}/tokens",
                                {"principal": "user:viewer@example.com", "role": "roles/cloudiot.viewer"}))
    viewer_token = created["token"]
    c.sign_in(viewer_token, project)
    c.text("needs the admin token")
    c.go("#/registries")
    c.heading("Registries")
    c.text(registry["id"])
    c.text("may not create registries")
    c.go(f"#/registries/{registry['id']}")
    c.text("may not create devices")
    c.go(f"#/registries/{registry['id']}/devices/sensor-1")
    c.heading("Device sensor-1")
    for label in ("Send config", "Send command", "Block", "Delete device", "Save metadata"):
        b = c.button(label)
        assert b.get_attribute("disabled") is not None, f"{label} is disabled for a viewer"
        assert "lacks" in (b.get_attribute("title") or ""), f"{label} says why"
    c.shot("08-viewer-device")
    # A refused token sends the user back to sign in.
    c.d.execute_script("sessionStorage.setItem('ferrocore.token', 'fct_' + 'x'.repeat(43))")
    c.go("#/registries")
    c.heading("Sign in")
    c.notice("sign in again")


def test_console_files_carry_a_strict_policy(server, anon_rest):
    for path in ("console/", "console/app.js", "console/api.js", "console/views.js", "console/console.css"):
        resp = anon_rest.get(path)
        assert resp.status_code == 200, path
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert anon_rest.get("console/../Cargo.toml").status_code == 404
    assert anon_rest.get("console/nope.js").status_code == 404
    # The page needs no token; the API behind it does.
    assert anon_rest.get("v1/status").status_code == 401


def test_keyboard_only_and_200_percent_zoom(server, rest, browser):
    """Signing in and reaching a device with the keyboard alone; at 200% zoom (a 1280-pixel window
    is 640 CSS pixels wide) the pages reflow instead of scrolling sideways."""
    from selenium.webdriver.common.keys import Keys

    c = Console(browser, server.base_url)
    project = fresh_project()
    registry = rest.create_registry(location_path(project), {"id": unique("reg")})
    rest.create_device(registry["name"], {"id": "sensor-1", "metadata": {"site": "hall-" + "x" * 120}})
    c.open("#/")
    c.d.execute_script("sessionStorage.clear()")
    c.d.refresh()
    c.heading("Sign in")

    def tab_to(name: str) -> None:
        for _ in range(12):
            if c.d.switch_to.active_element.get_attribute("name") == name:
                return
            c.d.switch_to.active_element.send_keys(Keys.TAB)
        raise AssertionError(f"Tab never reached the {name} field")

    tab_to("token")
    c.d.switch_to.active_element.send_keys(server.token)
    tab_to("project")
    c.d.switch_to.active_element.send_keys(project)
    tab_to("location")
    c.d.switch_to.active_element.send_keys(Keys.ENTER)
    c.heading("Overview")
    assert c.d.switch_to.active_element.tag_name == "h1"
    # The main navigation is reachable by Tab and followed with Enter.
    for _ in range(10):
        c.d.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        if c.d.switch_to.active_element.text == "Registries":
            break
    c.d.switch_to.active_element.send_keys(Keys.ENTER)
    c.heading("Registries")

    c.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 640, "height": 1000, "deviceScaleFactor": 2, "mobile": False})
    try:
        for fragment, title in (("#/registries", "Registries"),
                                (f"#/registries/{registry['id']}", "Registry"),
                                (f"#/registries/{registry['id']}/devices/sensor-1", "Device sensor-1")):
            c.go(fragment)
            c.heading(title)
            overflow = c.d.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{fragment} scrolls sideways by {overflow}px at 200% zoom"
        c.shot("09-device-at-200-percent")
    finally:
        c.d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_live_page_follows_a_topic_and_one_device(server, rest, browser):
    c = Console(browser, server.base_url)
    project = fresh_project()
    topic = f"projects/{project}/topics/telemetry"
    rest.create_registry(location_path(project), {"id": unique("reg"),
                                                  "eventNotificationConfigs": [{"pubsubTopicName": topic}]})

    def publish(device: str, data: bytes) -> None:
        body = {"messages": [{"data": base64.b64encode(data).decode(), "attributes": {"deviceId": device}}]}
        rest.ok(rest.post(f"v1/{topic}:publish", body))

    c.sign_in(server.token, project)
    c.go("#/live")
    c.heading("Live telemetry")
    c.fill("input[name=topic]", topic)
    c.fill("input[name=device]", "pump-2")
    c.press("Watch")
    c.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".live [role=status]"), "Following"))
    publish("pump-1", b"flow=1")
    publish("pump-2", b"flow=2")
    publish("pump-2", bytes([0, 1, 2, 255]))
    c.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".live tr.message")) == 2)
    rows = [r.text for r in c.d.find_elements(By.CSS_SELECTOR, ".live tr.message")]
    assert "00 01 02 ff" in rows[0], "binary payloads show as hex"
    assert "flow=2" in rows[1]
    assert not any("flow=1" in r for r in rows), "another device's record is left out"
    c.shot("10-live")
