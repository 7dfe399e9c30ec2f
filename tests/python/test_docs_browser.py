"""The interactive docs page, in headless Chromium: it renders the routes, and "Try it out"
on one of them gets the right answer."""

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are needed: scripts/test installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_docs_page_renders_routes_and_try_it_out_works(example, browser):
    ex = example("fastapi_multi_routes")
    browser.get(f"{ex.base}/hello/docs")
    wait = WebDriverWait(browser, 20)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section.op")))
    ops = {
        (s.get_attribute("data-method"), s.get_attribute("data-path"))
        for s in browser.find_elements(By.CSS_SELECTOR, "section.op")
    }
    assert ops == {("get", "/"), ("post", "/{subpath}")}
    assert browser.title == "MyFastAPIDeployment - docs"

    op = browser.find_element(By.CSS_SELECTOR, 'section.op[data-method="post"]')
    op.find_element(By.CSS_SELECTOR, "header").click()
    op.find_element(By.CSS_SELECTOR, "button.try-it-out").click()
    field = op.find_element(By.CSS_SELECTOR, 'input[name="subpath"]')
    field.send_keys("Serve")
    op.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = op.find_element(By.CSS_SELECTOR, "pre.response-status")
    wait.until(lambda _: status.text.startswith("200"))
    assert status.text == "200 POST /hello/Serve"
    assert op.find_element(By.CSS_SELECTOR, "pre.response-body").text == '"Hello from Serve!"'
