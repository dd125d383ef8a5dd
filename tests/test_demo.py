"""The Gradio demo: its handler directly, and the served page in headless Chromium (slow)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from retinascan_hf.demo import DISPLAY_SIZE, demo_view, enlarged, grade_photo
from retinascan_hf.loading import load_pipeline
from retinascan_hf.synthetic import synthetic_fundus_set

LABELS = {0: "No DR", 1: "Mild NPDR", 2: "Moderate NPDR", 3: "Severe NPDR", 4: "Proliferative DR"}


def test_view_of_a_gradable_answer() -> None:
    answer = {
        "grade": 3,
        "label": "Severe NPDR",
        "scores": [0.05, 0.05, 0.2, 0.6, 0.1],
        "referable": True,
        "mode": "knn",
        "gradable": True,
        "neighbors": [
            {"index": 4, "grade": 3, "similarity": 0.987654, "image_id": "eyepacs/1_left", "source": "eyepacs"}
        ],
    }
    view = demo_view(answer, LABELS)
    assert "Grade 3: Severe NPDR" in view.summary and "Referable DR:** yes" in view.summary
    assert view.probabilities == {
        "No DR": 0.05,
        "Mild NPDR": 0.05,
        "Moderate NPDR": 0.2,
        "Severe NPDR": 0.6,
        "Proliferative DR": 0.1,
    }
    assert view.neighbors == [[0.9877, 3, "eyepacs/1_left", "eyepacs"]]


def test_view_of_an_ungradable_answer_shows_the_reason_and_no_grade() -> None:
    answer = {
        "grade": None,
        "label": None,
        "scores": None,
        "referable": None,
        "gradable": False,
        "ood_score": 7.25,
        "reason": "Its embedding is far from every training image.",
        "error_type": "OutOfDistribution",
    }
    view = demo_view(answer, LABELS)
    assert view.summary.startswith("### Not gradable: OutOfDistribution")
    assert "far from every training image" in view.summary and "7.25" in view.summary
    assert view.probabilities == {} and view.neighbors == []


def test_handler_grades_an_upload_through_the_pipeline(model_dir: Path) -> None:
    grader = load_pipeline(model_dir)
    view = grade_photo(grader, synthetic_fundus_set([2], size=96, seed=4)[0])
    assert view.summary.startswith("### Grade")
    assert abs(sum(view.probabilities.values()) - 1.0) < 1e-5
    assert len(view.neighbors) == min(grader.model.config.knn_k, len(grader.feature_bank))
    assert view.overlay is not None and view.overlay.size == (32, 32)  # Grad-CAM on the 32 px picture the model saw
    assert grade_photo(grader, None).summary == "Upload a colour fundus photograph."
    shown = enlarged(view.overlay)  # what the page displays: the 32 px overlay scaled up, never down
    assert shown.size == (DISPLAY_SIZE, DISPLAY_SIZE) and enlarged(shown, size=64) is shown
    assert enlarged(None) is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.real_data
def test_page_in_headless_chromium_grades_a_real_photo(model_dir: Path, real_data_dir: Path, tmp_path: Path) -> None:
    """Load the page in Debian's chromium, upload a real EyePACS photo, click Grade, read the answer."""
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from retinascan_hf.demo import build_demo

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver; .ci/run does it)")
    photo = sorted((real_data_dir / "eyepacs-256" / "train").glob("*.jpeg"))[0]
    port = _free_port()
    demo = build_demo(load_pipeline(model_dir))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        upload = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#photo input[type=file]"))
        upload.send_keys(str(photo))
        time.sleep(1.0)  # let the upload land before grading
        driver.find_element(By.CSS_SELECTOR, "#grade").click()
        summary = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#summary").text.strip() or None
        )
        # RETINASCAN_DEMO_SCREENSHOT=docs/demo.png keeps the picture (the README's and the release notes' screenshot).
        driver.save_screenshot(os.environ.get("RETINASCAN_DEMO_SCREENSHOT", str(tmp_path / "demo.png")))
    finally:
        driver.quit()
        demo.close()
    assert summary.startswith("Grade "), summary  # the real photo passes the quality checks and is graded
    assert any(label in summary for label in LABELS.values())
