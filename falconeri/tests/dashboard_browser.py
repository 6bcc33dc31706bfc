"""The dashboard in a real browser: Debian's chromium, driven by selenium.

Run by falconeri/tests/e2e_dashboard.rs against a live local server with two
jobs: a slow one whose datums finish one by one, and one whose datum
`a-bad` prints a line, waits for the file DASH_GO, and fails. The script
signs in with the keyboard, watches the slow job's progress change without
a reload, opens the failing datum and reads its log live, lets it fail,
retries it, cancels the job, and takes screenshots into DASH_SHOTS.

Settings come from the environment: DASH_URL, DASH_TOKEN, DASH_SLOW_JOB,
DASH_FAIL_JOB, DASH_GO, DASH_SHOTS, DASH_CHROMIUM, DASH_CHROMEDRIVER.
Nothing is fetched from the internet: selenium is given the driver and the
browser, so it never looks for others.
"""

import os
import sys

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 90


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"dashboard_browser.py: {name} is not set")
    return value


def main():
    url = env("DASH_URL").rstrip("/")
    shots = env("DASH_SHOTS")
    options = webdriver.ChromeOptions()
    options.binary_location = env("DASH_CHROMIUM")
    for arg in [
        "--headless=new",
        # The tests may run as root, where chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1200",
        "--lang=en-US",
    ]:
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(executable_path=env("DASH_CHROMEDRIVER")), options=options
    )
    try:
        run(driver, url, shots)
    except BaseException:
        driver.save_screenshot(os.path.join(shots, "failure.png"))
        print("--- page at the failure:", driver.current_url, file=sys.stderr)
        print(driver.page_source[:20000], file=sys.stderr)
        raise
    finally:
        driver.quit()


def wait_for(driver, what, condition, seconds=WAIT_SECONDS):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def text_of(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def shot(driver, shots, name):
    # Let fonts and the last update settle into the picture.
    driver.execute_script("return document.fonts.ready")
    driver.save_screenshot(os.path.join(shots, name))
    print(f"screenshot {name}")


def run(driver, url, shots):
    slow = env("DASH_SLOW_JOB")
    failing = env("DASH_FAIL_JOB")

    # Signed out, every page leads to the sign-in form.
    driver.get(url + f"/jobs/{slow}")
    wait_for(driver, "the sign-in page", EC.url_to_be(url + "/login"))
    shot(driver, shots, "dashboard-sign-in.png")

    # Sign in with the keyboard alone: the token field has the focus.
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "token", active.get_attribute("outerHTML")
    active.send_keys(env("DASH_TOKEN") + Keys.ENTER)
    wait_for(driver, "the jobs page", EC.url_to_be(url + "/"))
    wait_for(
        driver,
        "the slow job's progress in the list",
        lambda d: "/" in text_of(d, f'tr[data-job="{slow}"] .progress-cell'),
    )
    shot(driver, shots, "dashboard-jobs.png")

    # Tab to the slow job's link (the focus ring must show) and follow it.
    for _ in range(40):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        active = driver.switch_to.active_element
        if (active.get_attribute("href") or "").endswith(f"/jobs/{slow}"):
            break
    else:
        raise AssertionError("Tab never reached the slow job's link")
    outline = driver.execute_script(
        "return getComputedStyle(arguments[0]).outlineStyle", active
    )
    assert outline != "none", "no visible focus"
    active.send_keys(Keys.ENTER)
    wait_for(driver, "the job page", EC.url_to_be(url + f"/jobs/{slow}"))

    # Progress changes live: the same page (no reload), a higher count.
    bar = wait_for(
        driver,
        "the progress bar",
        EC.presence_of_element_located((By.ID, "job-progress")),
    )
    wait_for(driver, "the first counts", lambda d: int(bar.get_attribute("max")) > 1)
    driver.execute_script("window.dashboardTestMark = 'still here'")
    before = float(bar.get_attribute("value"))
    wait_for(
        driver,
        "the progress to move",
        lambda d: float(bar.get_attribute("value")) > before,
    )
    assert (
        driver.execute_script("return window.dashboardTestMark") == "still here"
    ), "the page was reloaded"
    summary = text_of(driver, "#job-summary")
    assert "datums finished" in summary, summary
    wait_for(
        driver,
        "a rate and an ETA",
        lambda d: "datums/s" in text_of(d, "#job-summary")
        and "ETA" in text_of(d, "#job-summary"),
    )
    wait_for(
        driver,
        "the attempts timeline",
        EC.presence_of_element_located((By.CSS_SELECTOR, "#job-timeline .bar")),
    )
    shot(driver, shots, "dashboard-job.png")

    # The failing job's first datum (a-bad), from its datums table.
    driver.get(url + f"/jobs/{failing}")
    link = wait_for(
        driver,
        "the failing job's datums",
        EC.element_to_be_clickable((By.CSS_SELECTOR, "#datums tbody tr td a")),
    )
    datum = link.text
    link.click()
    wait_for(driver, "the datum page", EC.url_to_be(url + f"/datums/{datum}"))

    # Its log arrives while the attempt still runs...
    wait_for(
        driver,
        "the live log line",
        lambda d: "waiting for the browser" in text_of(d, "#log"),
    )
    assert "ended" not in text_of(driver, "#log"), text_of(driver, "#log")
    # ...and the rest as the command goes on and fails.
    with open(env("DASH_GO"), "w", encoding="utf-8") as go:
        go.write("go\n")
    wait_for(
        driver,
        "the failure in the log",
        lambda d: "attempt 1 ended: error, exit code 3" in text_of(d, "#log"),
    )
    assert "failing on purpose" in text_of(driver, "#log")
    retry = wait_for(
        driver, "the retry button", EC.element_to_be_clickable((By.ID, "retry-datum"))
    )
    shot(driver, shots, "dashboard-datum.png")

    # Retry it: a second attempt runs (and fails the same way).
    retry.click()
    wait_for(
        driver,
        "the second attempt's end",
        lambda d: "attempt 2 ended: error" in text_of(d, "#log"),
    )

    # Cancel the failing job from its page; its errors are grouped there.
    driver.get(url + f"/jobs/{failing}")
    wait_for(
        driver,
        "the grouped error",
        lambda d: "failing on purpose" in text_of(d, "#job-errors")
        or "exit" in text_of(d, "#job-errors"),
    )
    cancel = wait_for(
        driver, "the cancel button", EC.element_to_be_clickable((By.ID, "cancel-job"))
    )
    cancel.click()
    wait_for(driver, "the confirmation", EC.alert_is_present()).accept()
    wait_for(
        driver,
        "the job to be canceled",
        lambda d: text_of(d, "#job-status") == "canceled",
    )
    shot(driver, shots, "dashboard-canceled.png")

    # On a phone: nothing wider than the screen but the tables' own boxes.
    driver.set_window_size(390, 844)
    driver.get(url + f"/jobs/{slow}")
    wait_for(
        driver,
        "the job page on a phone",
        EC.presence_of_element_located((By.CSS_SELECTOR, "#job-counts dd")),
    )
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 1, f"the page is {overflow}px wider than a phone"
    shot(driver, shots, "dashboard-phone.png")
    print("dashboard browser test passed")


if __name__ == "__main__":
    main()
