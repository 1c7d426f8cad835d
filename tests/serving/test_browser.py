"""End to end in a real browser: the service on a loopback port with a real MovieLens 100K model,
headless Chromium (Debian's chromium + chromium-driver, installed by `.ci/run`) driven by Selenium:
search a title, rate it, and see recommendations (with titles, genres and what they are because of)
update; "more like this"."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from recforge.data import Interactions
from recforge.data.catalogue import item_metadata
from recforge.models import create_model
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def server(ml100k):
    model = create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)
    with serving(create_app(RecommenderService(model, item_metadata(ml100k)))) as url:
        yield url


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` on a free loopback port, in a thread; yields its URL."""
    import uvicorn

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


def settled(driver, list_id: str) -> list[dict] | None:
    """The rows of a list once its latest request is answered (read in one script call, so a re-render
    cannot make half of them stale), else None."""
    return driver.execute_script(
        """
        const list = document.getElementById(arguments[0]);
        if (list.getAttribute("aria-busy") !== "false") return null;
        return [...list.querySelectorAll("li")].map(li => ({item: li.dataset.item, text: li.textContent}));
        """,
        list_id,
    )


def click(wait, css: str) -> None:
    """Find and click in one retried step: a list re-rendered between the two is simply found again."""
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)


def test_a_misspelt_search_shows_the_closest_titles(server, browser):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    browser.get(server)
    browser.find_element(By.ID, "search").send_keys("strar wars")
    rows = wait.until(lambda d: (rows := settled(d, "results")) and any(r["item"] == "50" for r in rows) and rows)
    assert rows[0]["text"] == "No title contains “strar wars”; the closest:" and rows[1]["item"] == "50"


def test_rate_items_and_see_recommendations_update(server, browser):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    browser.get(server)
    wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    popular = [row["item"] for row in settled(browser, "recommendations")]
    assert len(popular) == 10

    browser.find_element(By.ID, "search").send_keys("star wars")
    found = wait.until(lambda d: (rows := settled(d, "results")) and any(r["item"] == "50" for r in rows) and rows)
    assert all("star wars" in row["text"].lower() for row in found)  # the latest search's answer, not an older one
    click(wait, "#results li[data-item='50'] button.rate[data-rating='5']")
    wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    rows = settled(browser, "recommendations")
    items = [row["item"] for row in rows]
    assert len(items) == 10 and "50" not in items and items != popular
    assert any("Return of the Jedi" in row["text"] for row in rows)
    reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recommendations .because")]
    assert reasons and all(text == "because you rated Star Wars (1977)" for text in reasons)  # the one rating
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendations .genres")[0].text  # genres shown
    assert "Star Wars" in browser.find_element(By.ID, "ratings").text

    from selenium.webdriver.support.ui import Select

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#genre option")) > 10)  # the catalogue's genres
    Select(browser.find_element(By.ID, "genre")).select_by_value("Horror")
    wait.until(lambda d: (rows := settled(d, "recommendations")) and [r["item"] for r in rows] != items)
    genres = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recommendations .genres")]
    assert len(genres) == 10 and all("Horror" in text for text in genres)
    Select(browser.find_element(By.ID, "genre")).select_by_value("")
    wait.until(lambda d: (rows := settled(d, "recommendations")) and [r["item"] for r in rows] == items)

    click(wait, f"#recommendations li[data-item='{items[0]}'] button.similar")
    wait.until(lambda d: (rows := settled(d, "similar")) is not None and len(rows) == 8)

    # the ratings live in the browser: a reload lists them and recommends from them again
    browser.refresh()
    wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    assert [row["item"] for row in settled(browser, "recommendations")] == items
    assert "Star Wars" in browser.find_element(By.ID, "ratings").text
    click(wait, "#ratings li[data-item='50'] button.remove")  # removed, also from what a reload restores
    wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    assert browser.find_element(By.ID, "ratings").text == "" and not browser.find_element(By.ID, "clear").is_displayed()
    browser.refresh()
    wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    assert [row["item"] for row in settled(browser, "recommendations")] == popular
    # what a page cannot parse is ignored, never an error
    browser.execute_script("""localStorage.setItem("recforge.ratings", '[{"item": 5}, "x", {"item": {"item": 50}}');""")
    browser.refresh()
    wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    browser.execute_script(
        """localStorage.setItem("recforge.ratings", JSON.stringify([{item: {item: 50, title: "Star Wars (1977)"},
           rating: 9}, {item: {item: 181, title: "Return of the Jedi (1983)", genres: []}, rating: 4}]));"""
    )
    browser.refresh()  # the rating outside 1-5 is left out, the other kept
    wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    assert "Return of the Jedi" in browser.find_element(By.ID, "ratings").text
    assert "Star Wars" not in browser.find_element(By.ID, "ratings").text
    # a stored rating of an item this model does not have (another model was deployed) is dropped
    browser.execute_script(
        """localStorage.setItem("recforge.ratings", JSON.stringify([{item: {item: 99999, title: "Gone (2031)"},
           rating: 5}, {item: {item: 181, title: "Return of the Jedi (1983)", genres: []}, rating: 4}]));"""
    )
    browser.refresh()
    wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
    assert "Gone" not in browser.find_element(By.ID, "ratings").text
    assert "Return of the Jedi" in browser.find_element(By.ID, "ratings").text
    assert "99999" not in browser.execute_script('return localStorage.getItem("recforge.ratings")')


@pytest.mark.parametrize("scale", [(1.0, 10.0), None], ids=["1-10 scale", "no ratings"])
def test_stars_are_sent_on_the_models_scale_and_items_without_ratings_are_added(browser, scale):
    """Five stars on an anime-style 1-10 scale are a 10 (not a 5, a middling rating there); a model trained
    on interactions without ratings gets an "add" button and items without a rating."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 8)
    items = np.concatenate([rng.choice(40, size=8, replace=False) for _ in range(60)])
    frame = pd.DataFrame({"user_id": users, "item_id": items, "rating": rng.integers(1, 11, size=len(users))})
    titles = pd.DataFrame({"title": [f"Show {i:02d}" for i in range(40)]}, index=pd.Index(range(40)))
    rated = scale is not None
    data = Interactions.from_frame(
        frame, rating="rating" if rated else None, rating_scale=scale, item_features=titles, name="shows"
    )
    model = create_model("mf", n_epochs=3) if rated else create_model("ials", n_iterations=3)
    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    with serving(create_app(RecommenderService(model.fit(data), item_metadata(data)))) as url:
        browser.get(url)
        wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
        browser.execute_script(  # record what the page sends
            """window.sent = []; const send = window.fetch;
               window.fetch = (url, options) => { if (options && options.body) window.sent.push(options.body);
                                                   return send(url, options); };"""
        )
        browser.find_element(By.ID, "search").send_keys("show 07")
        wait.until(lambda d: (rows := settled(d, "results")) and [r["item"] for r in rows] == ["7"])
        click(wait, "#results li[data-item='7'] button.rate" + ("[data-rating='5']" if rated else ".add"))
        wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
        sent = [json.loads(body) for body in browser.execute_script("return window.sent")]
        assert sent[-1]["items"] == [{"item": 7, "rating": 10.0 if rated else None}]
        if rated:  # one star is the scale's bottom
            click(wait, "#results li[data-item='7'] button.rate[data-rating='1']")
            wait.until(lambda d: len(d.execute_script("return window.sent")) > len(sent))
            assert json.loads(browser.execute_script("return window.sent")[-1])["items"] == [{"item": 7, "rating": 1}]
            click(wait, "#results li[data-item='7'] button.rate[data-rating='5']")
            wait.until(lambda d: "★★★★★" in d.find_element(By.ID, "ratings").text and settled(d, "recommendations"))
        stars = browser.find_elements(By.CSS_SELECTOR, "#recommendations button.rate[data-rating]")
        assert len(stars) == (50 if rated else 0)  # five per listed item, or none
        assert len(browser.find_elements(By.CSS_SELECTOR, "#recommendations button.add")) == (0 if rated else 10)
        mine = browser.find_element(By.ID, "ratings").text
        assert "Show 07" in mine and ("★★★★★" in mine) == rated
        assert browser.find_element(By.ID, "mine").text == ("Your ratings" if rated else "Your items")
        browser.refresh()  # kept with its rating (or none) for the next visit
        wait.until(lambda d: "history" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
        assert "Show 07" in browser.find_element(By.ID, "ratings").text
        browser.execute_script('localStorage.removeItem("recforge.ratings")')


def test_answers_from_a_state_the_service_cannot_confirm_say_so(ml100k, browser, monkeypatch):
    """With stale reads allowed, recommendations answered while the event store cannot be read carry their
    age (`X-Recforge-Stale`); the page says so above the lists, and stops saying it once the store is back."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from recforge.serving.service import STORE_RETRY
    from recforge.serving.store import StoreUnavailableError

    def unavailable() -> int:
        raise StoreUnavailableError("the event store cannot be read: OperationalError")

    model = create_model("ials", n_factors=16, n_iterations=4).fit(ml100k)
    service = RecommenderService(model, item_metadata(ml100k), stale_reads=60)
    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    notice = lambda d: d.find_element(By.ID, "stale")  # noqa: E731
    with serving(create_app(service)) as url:
        browser.get(url)
        wait.until(lambda d: "popularity" in d.find_element(By.ID, "served").text and settled(d, "recommendations"))
        assert not notice(browser).is_displayed()
        monkeypatch.setattr(service.engine.store, "latest_seq", unavailable)  # the database stops answering
        browser.execute_script("refresh()")
        wait.until(lambda d: notice(d).is_displayed())
        assert "cannot reach its database" in notice(browser).text and settled(browser, "recommendations")
        monkeypatch.undo()
        time.sleep(STORE_RETRY)  # a store that failed under a second ago is not asked by every read
        browser.execute_script("refresh()")
        wait.until(lambda d: not notice(d).is_displayed())
        assert len(settled(browser, "recommendations")) == 10
