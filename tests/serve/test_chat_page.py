"""The chat page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium)."""
import os
import re
import shutil
import time

import pytest

from .conftest import http

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver; nothing downloads a browser at run time
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMEDRIVER) and CHROMIUM),
                                reason="needs chromium + chromium-driver (scripts/install_system_deps.sh --test installs them)")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_type_see_the_answer_stream_press_stop(browser, slow_server):
    from selenium.webdriver.common.by import By

    browser.get(slow_server.url + "/")
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    wait_for(lambda: find("#model").text == "tiny-serve", what="the model name from /v1/models")

    # A long answer (the slow server makes ~25 tokens/s): it grows while we watch, then we stop it.
    max_tokens = find("#max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("60")
    find("#input").send_keys("안녕하세요, 자기소개를 해 주세요")
    find("#send").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 1, what="the user's message")
    answer = find(".msg.assistant")
    content = lambda: answer.get_attribute("textContent")  # noqa: E731  (.text drops whitespace-only answers)
    first = wait_for(content, what="the first streamed piece")
    wait_for(lambda: len(content()) > len(first), what="the answer to grow (streaming)")
    assert "streaming" in answer.get_attribute("class") and find("#send").get_attribute("disabled")
    find("#stop").click()
    wait_for(lambda: "(stopped)" in content(), what="the stop to take effect")
    assert not find("#send").get_attribute("disabled") and find("#stop").get_attribute("disabled")
    stopped = content()
    time.sleep(0.3)
    assert content() == stopped  # nothing arrives after the stop
    wait_for(lambda: http(slow_server.url + "/health")[1]["busy_rows"] == 0, timeout=3,
             what="the server to free the stopped answer's row")

    # A short answer to the end: the stats show its speed.
    max_tokens.clear()
    max_tokens.send_keys("5")
    before = find("#stats").text  # the stopped answer may have left its own stats there
    find("#input").send_keys("고마워요")
    find("#send").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2, what="the second answer")
    wait_for(lambda: "tok/s" in find("#stats").text and find("#stats").text != before,
             what="the tokens/s of the last answer")
    stats = re.fullmatch(r"last answer: (\d+) tokens in [\d.]+ s · [\d.]+ tok/s · first token \d+ ms", find("#stats").text)
    assert stats and 1 <= int(stats[1]) <= 5, find("#stats").text  # usage.completion_tokens, within max tokens
    assert float(find("#stats").get_attribute("data-tokens-per-second")) > 0
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [
        "안녕하세요, 자기소개를 해 주세요", "고마워요"]
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")


def test_a_long_conversation_fits_the_context_and_a_failed_message_does_not_poison_the_next(browser, server):
    """The test model's context is 128 tokens: by the third exchange the history no longer fits."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    many = lambda css: browser.find_elements(By.CSS_SELECTOR, css)  # noqa: E731
    wait_for(lambda: find("#model").text == "tiny-serve", what="the model name from /v1/models")
    find("#clear").click()
    find("#temperature").clear()
    find("#temperature").send_keys("0")
    find("#max-tokens").clear()
    find("#max-tokens").send_keys("30")

    def ask(text, answers):
        find("#input").send_keys(text)
        find("#send").click()
        wait_for(lambda: len(many(".msg.user")) == answers and not find("#send").get_attribute("disabled"),
                 what=f"the answer to {text!r}")

    for i in range(5):
        ask(f"{i}번째 질문입니다. 오늘 서울의 날씨는 어떤가요? 자세히 알려 주세요.", i + 1)
        assert not many(".msg.error"), many(".msg.error")[0].text
    assert len(many(".msg.assistant")) == 5
    info = [e.text for e in many(".msg.info")]
    assert info and all("no longer fit the model's context of 128 tokens" in t for t in info), info
    assert many(".msg.user.dropped")  # the oldest questions are shown as left out
    sent = browser.execute_script("return messages.map((m) => m.content)")
    assert "0번째" not in " ".join(sent) and sent[-2].startswith("4번째")

    # A message that cannot fit even alone fails, and stays out of the conversation.
    ask("가나다라마 " * 120, 6)
    assert len(many(".msg.error")) == 1 and "maximum context length" in many(".msg.error")[0].text
    assert "dropped" in many(".msg.user")[-1].get_attribute("class")
    assert "가나다라마" not in " ".join(browser.execute_script("return messages.map((m) => m.content)"))
    ask("고마워요", 7)
    assert len(many(".msg.error")) == 1 and len(many(".msg.assistant")) == 6
    assert browser.execute_script("return messages.map((m) => m.content)")[-2] == "고마워요"
