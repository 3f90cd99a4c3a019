"""`--mode=demo`: the generate function called directly, and the page in a real browser.

The browser test starts `main.py --mode=demo` (the shipped bundle) in a subprocess on a free
port and drives it with Playwright and the system Chromium (Debian's `chromium`, installed by
the README's test command). It fails, never skips, when the browser is missing.
"""
import concurrent.futures
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from ganime_jax import bundle, cli, sample, web_demo
from ganime_jax.data import video_io
from ganime_jax.errors import UserError

pytestmark = pytest.mark.costly(seconds=70)

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NUM_FRAMES = 5  # short clips: the test pays for one compile per length
SERVER_START_S = 180
GENERATE_TIMEOUT_MS = 240_000
# Playwright's default of 30 s per action: a click once took longer than that on a core shared
# with a compile (the browser had no CPU to take the input); generous, a real hang still fails.
ACTION_TIMEOUT_MS = 120_000
# Set to a path to keep the browser's screenshot of the page after a generation (the README's).
SCREENSHOT_ENV = "GANIME_DEMO_SCREENSHOT"


@pytest.fixture(scope="module")
def demo_run():
    return bundle.load_sample_run(bundle.DEMO_BUNDLE)


@pytest.fixture(scope="module")
def inbetweener(demo_run, tmp_path_factory):
    generator = sample.load_generator(demo_run.config, demo_run.workdir)
    return web_demo.InBetweener(generator, 8.0, tmp_path_factory.mktemp("demo_out"))


def test_generate_writes_the_clip_its_strip_and_both_files(inbetweener, demo_run):
    first, last = str(demo_run.first), str(demo_run.last)
    result = inbetweener.generate(first, last, NUM_FRAMES, "top_k", 1.0, 50, 1.0, 0)
    frames = np.stack(list(video_io.read_video(result.video)))
    assert frames.shape == (NUM_FRAMES, 64, 128, 3)
    with Image.open(result.gif) as gif:
        assert gif.n_frames == NUM_FRAMES
    columns = web_demo.STRIP_COLUMNS
    assert result.strip.shape == (68, columns * 132, 3)  # one padded row of 64x128 frames
    np.testing.assert_array_equal(result.strip[2:66, 2:130], np.asarray(Image.open(first)))
    assert result.status.startswith(f"{web_demo.OK_PREFIX}{NUM_FRAMES} frames (3 generated)")
    again = inbetweener.generate(first, last, NUM_FRAMES, "top_k", 1.0, 50, 1.0, 0)
    assert again.video != result.video  # every request gets its own files
    np.testing.assert_array_equal(again.strip, result.strip)  # same seed, same clip


def test_the_bundles_direction_is_used(demo_run, inbetweener, tmp_path):
    both = web_demo.InBetweener(inbetweener.generator, 8.0, tmp_path, direction="both")
    result = both.generate(str(demo_run.first), str(demo_run.last), NUM_FRAMES, "top_k", 1.0,
                           50, 1.0, 0)
    assert result.status.endswith("top_k sampling, halves from both ends.")
    with pytest.raises(UserError, match="unknown sampling direction 'up'"):
        web_demo.InBetweener(inbetweener.generator, 8.0, tmp_path, direction="up")


def test_bad_inputs_are_one_line_messages(inbetweener, demo_run, tmp_path):
    first, last = str(demo_run.first), str(demo_run.last)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "square.png")
    max_frames = inbetweener.max_frames
    cases = [((None, last, NUM_FRAMES), "upload both a first and a last frame"),
             ((str(text), last, NUM_FRAMES), "cannot read image .*notes.png"),
             ((str(tmp_path / "dot.png"),) * 2 + (NUM_FRAMES,), "1x1 frame is too small"),
             ((first, str(tmp_path / "square.png"), NUM_FRAMES),
              "is 128x64 but the last image .* is 100x100"),
             ((first, last, max_frames + 1), f"num_frames={max_frames + 1} is not supported"),
             ((first, last, 2), "num_frames=2 is not supported"),
             ((first, last, 4.5), "frames must be a whole number")]
    for (a, b, n), message in cases:
        with pytest.raises(UserError, match=message) as error:
            inbetweener.generate(a, b, n, "top_k", 1.0, 50, 1.0, 0)
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="temperature must be > 0"):
        inbetweener.generate(first, last, NUM_FRAMES, "top_k", 0.0, 50, 1.0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((web_demo.HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`main.py --mode=demo` on a free port; its URL once the page answers."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "log.txt"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "main.py", "--mode=demo", f"--port={port}"],
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{web_demo.HOST}:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
    yield {"url": url, "log": log}
    process.terminate()
    process.wait(timeout=30)


def _generate_and_wait(page, expected: str) -> str:
    page.click("#generate")
    page.wait_for_function(
        "expected => document.querySelector('#status').innerText.includes(expected)",
        arg=expected, timeout=GENERATE_TIMEOUT_MS)
    return page.inner_text("#status")


def _upload(page, component: str, path: pathlib.Path) -> None:
    """Puts `path` into a file component (clearing the file it holds first)."""
    clear = page.locator(f"#{component} button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.set_input_files(f"#{component} input[type=file]", str(path))


def test_the_page_in_a_browser(server, demo_run, tmp_path):
    assert CHROMIUM, ("no chromium on PATH: the README's test command installs it "
                      "(apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    assert "serving the step-" in server["log"].read_text()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400},
                                accept_downloads=True)
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(server["url"])
        _upload(page, "first", demo_run.first)
        _upload(page, "last", demo_run.last)
        frames = page.locator("#frames input[type=number]")
        frames.fill(str(NUM_FRAMES))
        frames.press("Enter")
        status = _generate_and_wait(page, web_demo.OK_PREFIX)
        assert f"{NUM_FRAMES} frames" in status
        page.wait_for_selector("#video video")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(shot, os.environ[SCREENSHOT_ENV])
        link = page.locator('#files a[download$=".mp4"]')
        with page.expect_download() as download:
            link.click()
        mp4 = tmp_path / "download.mp4"
        download.value.save_as(mp4)
        assert len(list(video_io.read_video(mp4))) == NUM_FRAMES

        _upload(page, "first", text)
        status = _generate_and_wait(page, web_demo.ERROR_PREFIX)
        assert "cannot read image" in status and "notes.png" in status
        _upload(page, "first", demo_run.first)
        assert f"{NUM_FRAMES} frames" in _generate_and_wait(page, web_demo.OK_PREFIX)
        browser.close()


def test_two_requests_at_once_both_complete(server, demo_run):
    from gradio_client import Client, handle_file
    client = Client(server["url"], verbose=False)
    first, last = handle_file(str(demo_run.first)), handle_file(str(demo_run.last))
    jobs = [client.submit(first, last, NUM_FRAMES, "top_k", 1.0, 50, 1.0, seed,
                          api_name="/" + web_demo.API_NAME) for seed in (1, 2)]
    done, _ = concurrent.futures.wait(jobs, timeout=GENERATE_TIMEOUT_MS / 1000)
    assert len(done) == 2
    for job in jobs:
        video, _, files, status = job.result()
        assert status.startswith(web_demo.OK_PREFIX), status
        assert len(list(video_io.read_video(video["video"] if isinstance(video, dict)
                                            else video))) == NUM_FRAMES


def test_a_busy_port_and_mode_flags_are_one_line_errors(demo_run):
    with socket.socket() as taken:
        taken.bind((web_demo.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{port} .*free --port"):
            web_demo.serve(demo_run.config, demo_run.workdir, port=port, block=False)
    with pytest.raises(UserError, match="--port=0 is not a TCP port"):
        web_demo.serve(demo_run.config, demo_run.workdir, port=0, block=False)
    with pytest.raises(UserError, match="--port only applies to --mode=demo"):
        cli.run_mode("sample", demo_run.config, str(demo_run.workdir), port=8000)
    with pytest.raises(UserError, match="--output only applies to --mode=sample"):
        cli.run_mode("demo", demo_run.config, str(demo_run.workdir), output="a.mp4")
