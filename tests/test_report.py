"""The HTML report of a tiny pipeline: what it contains, and that it works in a real headless
browser from file:// (no console errors, no network, one table row per head, sorting and
filtering, every plot drawn), with a screenshot."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from headplast.cli.main import main
from tiny import tiny_model_dir

pytestmark = pytest.mark.slow
SMALL = ["--max-train-samples", "48", "--num-epochs", "1", "--batch-size", "8", "--eval-size", "24", "--max-length",
         "48", "--learning-rate", "3e-3", "--probe-epochs", "20", "--n-boot", "200", "--n-perm", "100",
         "--n-boot-examples", "100"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    model = tiny_model_dir("bert", tmp / "tiny", init=0.3)
    root = tmp / "out"
    assert main(["pipeline", "--model", str(model), "--output-root", str(root), *SMALL]) == 0
    return root, root / "report.html"


def test_report_holds_the_answer_every_head_and_provenance(report, capsys):
    root, page = report
    text = page.read_text()
    m = json.loads((root / "COMPARE/SST-2/seed1/compare_metrics.json").read_text())
    for line in m["headline"]:
        assert line.replace("−", "&#8722;") in text or line in text
    table = re.search(r'<table class="heads[^>]*id="heads-0">(.*?)</table>', text, re.S).group(1)
    assert table.count("<tr") == 1 + m["n_heads"]  # header + one row per head
    cases = {(h["layer"], h["head"]) for lab in m["labels"] for k in ("important_but_static", "plastic_but_unimportant")
             for h in m["cases"][lab][k]["heads"]}
    assert table.count('<tr class="case">') >= len(cases) > 0
    rc = json.loads((root / "FFT/SST-2/seed1/run_config.json").read_text())
    assert rc["theta0_hash"] in text and rc["theta1_hash"] in text and rc["versions"]["torch"] in text
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?:', text)  # nothing fetched
    hover = re.search(r'layer 1, head 3[^"]*"', text).group(0)  # a point's hover text: every value of the head
    assert all(f"{c} = " in hover for c in ("I_pre", "U", "I_post", "effect_fwd", "srank", "grad_norm"))
    assert main(["report", "--output-root", str(root)]) == 0  # nothing changed: not rewritten
    assert "report up to date" in capsys.readouterr().out


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless Chromium and chromedriver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.mark.browser
def test_report_in_a_headless_browser(report, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, page = report
    n_heads = json.loads((root / "COMPARE/SST-2/seed1/compare_metrics.json").read_text())["n_heads"]
    b = _browser()
    try:
        b.get(page.resolve().as_uri())
        WebDriverWait(b, 60).until(lambda d: d.execute_script("return document.body.dataset.tablesReady") == "yes")
        rows = lambda: b.find_elements(By.CSS_SELECTOR, "#heads-0 tbody tr")  # noqa: E731
        assert len(rows()) == n_heads
        headers = b.find_elements(By.CSS_SELECTOR, "#heads-0 thead th")
        col = [h.text for h in headers].index("I_pre")
        values = lambda: [float(r.find_elements(By.TAG_NAME, "td")[col].text) for r in rows()]  # noqa: E731
        before = values()
        assert before != sorted(before)
        for expected in (sorted(before), sorted(before, reverse=True)):  # a click sorts ascending, the next descending
            time.sleep(0.6)  # two quick clicks on one header would read as a double click
            headers[col].click()
            WebDriverWait(b, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: values() == expected)
        box = b.find_element(By.CSS_SELECTOR, "div.dt-search input")
        box.send_keys("important-but-static")
        shown = len(rows())
        assert 0 < shown < n_heads
        box.clear()
        box.send_keys(" ")
        plots = b.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')].map(p => "
            "p.querySelectorAll('.scatterlayer .point').length + p.querySelectorAll('.hm, image').length)")
        assert len(plots) == 3 and all(n > 0 for n in plots)  # I_pre vs U, I_pre vs effect, heatmaps
        points = b.execute_script("return document.querySelector('#scatter-u-0').querySelectorAll('.point').length")
        assert points == 2 * n_heads  # every head of both runs
        errors = [e for e in b.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        requests = [json.loads(e["message"])["message"] for e in b.get_log("performance")]
        urls = {r["params"]["request"]["url"] for r in requests if r["method"] == "Network.requestWillBeSent"}
        assert all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
        shot = Path(tmp_path) / "report.png"
        b.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
    finally:
        b.quit()
