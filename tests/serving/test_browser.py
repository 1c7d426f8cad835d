"""End to end in a real browser: the service on a loopback port with a real MovieLens 100K model,
headless Chromium (Debian's chromium + chromium-driver, installed by `.ci/run`) driven by Selenium:
search a title, rate it, and see recommendations (with titles and genres) update; "more like this"."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from recforge.data.catalogue import item_metadata
from recforge.models import create_model
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def server(ml100k):
    import uvicorn

    model = create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)
    app = create_app(RecommenderService(model, item_metadata(ml100k)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail(
            "Chromium and ChromeDriver are required (apt-get install chromium chromium-driver; .ci/run does)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_rate_items_and_see_recommendations_update(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15)
    browser.get(server)
    wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text)
    popular = [li.get_attribute("data-item") for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li")]
    assert len(popular) == 10

    browser.find_element(By.ID, "search").send_keys("star wars")
    first = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results li[data-item='50']")))
    first.find_element(By.CSS_SELECTOR, "button.rate[data-rating='5']").click()
    wait.until(lambda d: "history" in d.find_element(By.ID, "served").text)
    rows = browser.find_elements(By.CSS_SELECTOR, "#recommendations li")
    items = [li.get_attribute("data-item") for li in rows]
    assert len(items) == 10 and "50" not in items and items != popular
    assert "Return of the Jedi" in browser.find_element(By.ID, "recommendations").text
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendations .genres")[0].text  # genres shown
    assert "Star Wars" in browser.find_element(By.ID, "ratings").text

    rows[0].find_element(By.CSS_SELECTOR, "button.similar").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar li")) == 8)
