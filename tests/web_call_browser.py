#!/usr/bin/env python3
"""Drives Debian's headless Chromium (chromium-driver, selenium) through one
web call on a test page that embeds the daemon's /widget.js.

Usage: web_call_browser.py PAGE_URL CALLER_WAV SCREENSHOT EXPECT_TEXT [HOLD_SECONDS]

The browser's microphone is CALLER_WAV (--use-file-for-fake-audio-capture).
Steps: check the layout at 375 px, click "Call", wait for the live state and
for a caption holding EXPECT_TEXT (the agent's reply), read getStats() for
the agent's inbound audio, save a screenshot of the live widget, click
"Hang up" (not before HOLD_SECONDS after the call went live). Prints one JSON object with what it saw; exits non-zero with the
reason on stderr when a step fails.
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    page, wav, shot, expect = sys.argv[1:5]
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--use-file-for-fake-audio-capture=" + wav,
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=375,900",
    ]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    out = {}
    try:
        driver.set_window_size(375, 900)
        driver.get(page)
        deadline = time.time() + 10
        while not driver.find_elements(By.CSS_SELECTOR, ".alw .alw-call"):
            if time.time() > deadline:
                raise SystemExit("the widget did not render")
            time.sleep(0.1)
        # Layout at 375 px: nothing wider than the viewport.
        out["layout"] = driver.execute_script(
            "var b=document.querySelector('.alw').getBoundingClientRect();"
            "return {viewport: window.innerWidth, scroll: document.documentElement.scrollWidth,"
            " left: b.left, right: b.right,"
            " buttons: Array.from(document.querySelectorAll('.alw button'))"
            "  .filter(function(x){return x.offsetParent!==null;})"
            "  .map(function(x){var r=x.getBoundingClientRect();"
            "   return {label: x.textContent, right: r.right, height: r.height};})};"
        )
        # Keyboard: the call button takes focus and has a name.
        out["call_label"] = driver.execute_script(
            "var c=document.querySelector('.alw .alw-call'); c.focus();"
            "return document.activeElement===c ? c.textContent : null;"
        )
        driver.find_element(By.CSS_SELECTOR, ".alw .alw-call").click()
        deadline = time.time() + 20
        while driver.execute_script(
            "return document.querySelector('.alw').getAttribute('data-state')"
        ) != "live":
            if time.time() > deadline:
                status = driver.execute_script("return document.querySelector('.alw-status').textContent")
                raise SystemExit("never live: " + status)
            time.sleep(0.1)
        live_at = time.time()
        out["live_status"] = driver.execute_script(
            "return document.querySelector('.alw-status').textContent")
        deadline = time.time() + 40
        captions = ""
        while expect.lower() not in captions.lower():
            if time.time() > deadline:
                raise SystemExit("no caption with %r; captions: %r" % (expect, captions))
            time.sleep(0.2)
            captions = driver.execute_script(
                "return document.querySelector('.alw-captions').innerText")
        if time.time() < live_at + hold:
            time.sleep(live_at + hold - time.time())
            captions = driver.execute_script(
                "return document.querySelector('.alw-captions').innerText")
        out["captions"] = captions
        stats = driver.execute_async_script(
            "var done=arguments[arguments.length-1];"
            "var w=AgentlineWidget.widgets[0];"
            "w.pc.getStats().then(function(r){var o=null;"
            " r.forEach(function(s){if(s.type==='inbound-rtp'&&s.kind==='audio')o={"
            "  packetsReceived:s.packetsReceived, totalAudioEnergy:s.totalAudioEnergy,"
            "  audioLevel:s.audioLevel, bytesReceived:s.bytesReceived};});"
            " var sent=null; r.forEach(function(s){if(s.type==='outbound-rtp'&&s.kind==='audio')"
            "  sent={packetsSent:s.packetsSent};});"
            " done({inbound:o, outbound:sent});});"
        )
        out["stats"] = stats
        driver.save_screenshot(shot)
        out["screenshot"] = shot
        driver.find_element(By.CSS_SELECTOR, ".alw .alw-hangup").click()
        deadline = time.time() + 5
        while driver.execute_script(
            "return document.querySelector('.alw').getAttribute('data-state')"
        ) != "ended":
            if time.time() > deadline:
                raise SystemExit("the page did not end the call")
            time.sleep(0.1)
        time.sleep(1)
        out["ended_status"] = driver.execute_script(
            "return document.querySelector('.alw-status').textContent")
    finally:
        logs = []
        try:
            logs = driver.get_log("browser")
        except Exception:  # noqa: BLE001 - logs are a courtesy
            pass
        out["console"] = [l.get("message") for l in logs][-20:]
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
