"""A real browser completes `pladis study` runs: headless Debian Chromium driven by Selenium, by clicking and by
keyboard, at desktop and phone width; screenshots of the pair and results pages are saved.

Needs `chromium` and `chromium-driver` (scripts/ci_services.sh installs them); skips with the reason otherwise.
Set PLADIS_STUDY_SCREENSHOTS=DIR to also copy the screenshots to DIR (docs/ holds one such set).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("selenium")
pytest.importorskip("uvicorn")
import sqlalchemy as sa
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from pladis.study import service
from pladis.study.app import create_app
from pladis.study.db import Vote, make_engine, migrate, sqlite_url
from pladis.study.fixture import make_demo_run
from pladis.study.loader import load_pairs_from_run
from pladis.study.results import format_table, summarise

ADMIN = "browser-admin-token-0123456789"
CHROMIUM = os.environ.get("PLADIS_STUDY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("PLADIS_STUDY_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAIRS = 6  # per evaluator, of the run's 12
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        f"headless browser missing ({CHROMIUM}, {CHROMEDRIVER}); run `bash scripts/ci_services.sh`",
        allow_module_level=True,
    )

# Saturation of the left and right images, read from their pixels the way an evaluator looks at them.
SATURATION_JS = """
function sat(img) {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const x = c.getContext('2d'); x.drawImage(img, 0, 0);
  const d = x.getImageData(0, 0, c.width, c.height).data; let s = 0;
  for (let i = 0; i < d.length; i += 4) s += Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]);
  return s / (d.length / 4);
}
return [sat(document.getElementById('img-left')), sat(document.getElementById('img-right'))];
"""


class ServerThread:
    def __init__(self, app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"chromium did not start under chromedriver: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screen(driver, metrics: dict) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def wait_images(driver) -> None:
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return ['img-left','img-right'].every(id => { const i = document.getElementById(id);"
            " return i && i.complete && i.naturalWidth > 0; });"
        )
    )


def decide(driver, position: int) -> dict[str, str]:
    """The simulated evaluator: prefers the vivid image; on alignment, no preference on pairs 3 and 6 and the washed
    out one on pair 4."""
    left, right = driver.execute_script(SATURATION_JS)
    assert abs(left - right) > 5, "the two images of a pair should differ"
    vivid = "left" if left > right else "right"
    dull = "right" if vivid == "left" else "left"
    return {"quality": vivid, "alignment": "none" if position % 3 == 0 else dull if position == 4 else vivid}


def progress(driver) -> str | None:
    return driver.execute_script("const e = document.getElementById('progress'); return e ? e.textContent : null;")


def complete_by_clicking(driver, base: str, shots: Path | None) -> None:
    driver.get(base + "/")
    driver.find_element(By.ID, "start").click()
    for position in range(1, PAIRS + 1):
        WebDriverWait(driver, 20).until(lambda d, p=position: progress(d) == f"{p} / {PAIRS}")
        wait_images(driver)
        answers = decide(driver, position)
        for question, side in answers.items():
            driver.find_element(By.XPATH, f"//fieldset[@data-question='{question}']//input[@value='{side}']/..").click()
        if shots is not None and position == 2:
            driver.save_screenshot(str(shots / "study-pair-desktop.png"))
        driver.find_element(By.ID, "next").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "thanks"))


def complete_by_keyboard(driver, base: str, shots: Path | None) -> None:
    driver.get(base + "/")
    # keys sent before the page is ready are lost, as a person's would be: wait for autofocus, then for study.js
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.activeElement.id") == "start")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    keys = {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT, "none": Keys.ARROW_DOWN}
    for position in range(1, PAIRS + 1):
        WebDriverWait(driver, 20).until(lambda d, p=position: progress(d) == f"{p} / {PAIRS}")
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.keys") == "ready")
        wait_images(driver)
        answers = decide(driver, position)
        # A slip corrected with Backspace: the undone answer must not count.
        wrong = "right" if answers["quality"] == "left" else "left"
        ActionChains(driver).send_keys(keys[wrong], Keys.BACKSPACE).perform()
        ActionChains(driver).send_keys(keys[answers["quality"]]).perform()
        if shots is not None and position == 1:
            driver.save_screenshot(str(shots / "study-pair-phone.png"))
        ActionChains(driver).send_keys(keys[answers["alignment"]], Keys.ENTER).perform()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "thanks"))


def test_browser_completes_study(browser, tmp_path: Path):
    run = make_demo_run(tmp_path / "run", samples=12, size=192)
    engine = make_engine(sqlite_url(tmp_path / "study.sqlite"))
    migrate(engine)
    spec = service.StudySpec("browser", "baseline", "pladis", pairs_per_evaluator=PAIRS)
    study_id = service.open_study(engine, spec, load_pairs_from_run(run, "baseline", "pladis"))
    shots = tmp_path / "shots"
    shots.mkdir()
    with ServerThread(create_app(engine, study_id, ADMIN)) as base:
        screen(browser, DESKTOP)
        complete_by_clicking(browser, base, shots)
        browser.delete_all_cookies()
        screen(browser, PHONE)
        complete_by_keyboard(browser, base, shots)
        browser.delete_all_cookies()
        complete_by_clicking(browser, base, None)  # a third evaluator, clicking on the phone
        browser.delete_all_cookies()
        screen(browser, DESKTOP)
        complete_by_keyboard(browser, base, None)
        # A finished evaluator who comes back is thanked, not given a second go.
        browser.get(base + "/")
        assert browser.find_elements(By.ID, "thanks")
        browser.get(base + "/results?token=wrong")
        assert "admin token" in browser.find_element(By.ID, "error").text
        browser.get(base + f"/results?token={ADMIN}")
        table = browser.find_element(By.ID, "results")
        assert "quality" in table.text and "single object" in table.text
        browser.save_screenshot(str(shots / "study-results.png"))
        screen(browser, PHONE)
        browser.get(base + "/")
        browser.save_screenshot(str(shots / "study-start-phone.png"))
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(Vote)).scalar_one() == 4 * PAIRS * 2
    summary = summarise(engine, study_id)
    quality, alignment = summary.overall("quality"), summary.overall("alignment")
    # The evaluators always picked the vivid image, which is config B, whatever side it was on.
    assert (quality.wins_b, quality.wins_a, quality.ties) == (4 * PAIRS, 0, 0)
    assert (alignment.wins_b, alignment.wins_a, alignment.ties) == (12, 4, 8) and summary.finished == 4
    for name in ("study-pair-desktop.png", "study-pair-phone.png", "study-results.png", "study-start-phone.png"):
        assert (shots / name).read_bytes()[:4] == b"\x89PNG"
    print("\n" + "\n".join(" | ".join(row) for row in format_table(summary)))
    target = os.environ.get("PLADIS_STUDY_SCREENSHOTS")
    if target:
        for name in sorted(os.listdir(shots)):
            shutil.copy(shots / name, Path(target) / name)
