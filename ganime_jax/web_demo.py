"""`python main.py --mode=demo`: a local web page that makes the frames between two images.

Serves a Gradio page on 127.0.0.1 only. The models are loaded once per server; JAX keeps the
compiled generation for each frame count and sampling method, so only the first request of a
given length pays for compilation. Requests are queued and run one at a time (two cores gain
nothing from running two generations at once), so simultaneous requests all complete. A bad
input is a message in the page's status line; the server keeps serving.
"""
import atexit
import dataclasses
import itertools
import pathlib
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np

from ganime_jax import conditioning, generation, sample
from ganime_jax.data import video_io
from ganime_jax.errors import UserError
from ganime_jax.images import load_frame_pair
from ganime_jax.train.summary import image_grid

HOST = "127.0.0.1"  # never reachable from other machines
DEFAULT_PORT = 7860
STRIP_COLUMNS = 8  # frames per row of the strip under the video
VIDEO_HEIGHT = 320  # pixels of the player in the page
API_NAME = "generate"  # gradio_client: Client(url).predict(..., api_name="/generate")
TITLE = "ganime-jax: in-between frames"
OK_PREFIX = "Done: "
ERROR_PREFIX = "Error: "


@dataclasses.dataclass(frozen=True)
class Result:
    """What one request made: the MP4 and GIF written, the frame strip, a status line."""

    video: pathlib.Path
    gif: pathlib.Path
    strip: np.ndarray  # (H', W', 3) uint8
    status: str


class InBetweener:
    """A loaded generator plus the folder its results are written to (one per server)."""

    def __init__(self, generator: sample.Generator, fps: float, output_dir: str | pathlib.Path,
                 direction: str = "forward"):
        generation.check_direction(direction)
        self.generator = generator
        self.direction = direction  # the bundle's config.sample.direction
        self.fps = fps
        self.output_dir = pathlib.Path(output_dir)
        self._count = itertools.count()
        self._lock = threading.Lock()

    @property
    def max_frames(self) -> int:
        return self.generator.transformer.max_frames

    def generate(self, first: str | None, last: str | None, num_frames: int, method: str,
                 temperature: float, top_k: int, top_p: float, seed: int) -> Result:
        """The clip between the images at `first` and `last`; UserError on bad input."""
        if not first or not last:
            raise UserError("upload both a first and a last frame (or click the example).")
        num_frames = _whole(num_frames, "frames")
        top_k, seed = _whole(top_k, "top-k"), _whole(seed, "seed")
        generation.check_num_frames(num_frames, self.max_frames)
        generation.check_sampling(method, float(temperature), top_k, float(top_p))
        first_frame, last_frame = load_frame_pair(first, last, self.generator.tokenizer.frame_shape)
        start = time.perf_counter()
        with self._lock:  # one generation at a time; the queue orders the requests
            clip = generation.generate_frames(
                self.generator.tokenizer, self.generator.transformer, self.generator.params,
                first_frame[None], last_frame[None], num_frames, jax.random.key(seed),
                method=method, temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                direction=self.direction, refiner=self.generator.refiner,
                decode_batch_size=generation.default_decode_batch_size())[0]
        seconds = time.perf_counter() - start
        stem = self.output_dir / f"inbetween_{next(self._count):05d}"
        video, gif = stem.with_suffix(sample.VIDEO_SUFFIX), stem.with_suffix(sample.GIF_SUFFIX)
        video_io.write_video(video, clip, fps=self.fps)
        video_io.write_gif(gif, clip, fps=self.fps)
        rows = [clip[i:i + STRIP_COLUMNS] for i in range(0, len(clip), STRIP_COLUMNS)]
        rows[-1] = np.concatenate([rows[-1], np.full((STRIP_COLUMNS - len(rows[-1]),
                                                      *clip.shape[1:]), 255, np.uint8)])
        status = (f"{OK_PREFIX}{num_frames} frames ({num_frames - 2} generated) in {seconds:.1f} s "
                  f"with the step-{self.generator.step} model, {method} sampling"
                  f"{sample.choice_label(1, 'arrival', self.direction)}.")
        return Result(video, gif, image_grid(rows), status)


def _whole(value: Any, name: str) -> int:
    """Gradio numbers arrive as floats; a fractional or missing one is refused."""
    if value is None or float(value) != int(float(value)):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    return int(float(value))


def build_page(inbetweener: InBetweener, config: Any, example: tuple[str, str] | None) -> Any:
    """The Gradio Blocks of the page (not launched)."""
    import gradio as gr

    settings = config.sample

    def on_generate(first, last, num_frames, method, temperature, top_k, top_p, seed,
                    progress=gr.Progress()):
        progress(0.1, desc="generating")
        try:
            result = inbetweener.generate(first, last, num_frames, method, temperature, top_k,
                                          top_p, seed)
        except UserError as error:
            return None, None, None, ERROR_PREFIX + str(error)
        progress(1.0, desc="done")
        return (str(result.video), result.strip, [str(result.video), str(result.gif)],
                result.status)

    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"## {TITLE}\nUpload the first and the last frame of a shot; the model draws "
                    "the frames in between.")
        with gr.Row():
            first = gr.File(label="First frame", file_types=["image"], type="filepath",
                            elem_id="first")
            last = gr.File(label="Last frame", file_types=["image"], type="filepath",
                           elem_id="last")
        if example is not None:
            gr.Examples(examples=[list(example)], inputs=[first, last],
                        label="Example (a held-out clip's first and last frame)")
        with gr.Row():
            num_frames = gr.Slider(conditioning.MIN_CLIP_FRAMES,
                                   inbetweener.max_frames, value=settings.num_frames, step=1,
                                   label="Frames (first and last included)", elem_id="frames")
            method = gr.Radio(list(generation.METHODS), value=settings.method,
                              label="Sampling", elem_id="method")
        with gr.Row():
            temperature = gr.Slider(0.05, 2.0, value=settings.temperature, step=0.05,
                                    label="Temperature")
            top_k = gr.Number(value=settings.top_k, precision=0, label="top-k")
            top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="top-p")
            seed = gr.Number(value=settings.seed, precision=0, label="Seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        video = gr.Video(label="In-betweens", autoplay=True, loop=True, height=VIDEO_HEIGHT,
                         elem_id="video")
        strip = gr.Image(label="Frames", type="numpy", elem_id="strip")
        files = gr.File(label="Downloads (MP4, GIF)", file_count="multiple", elem_id="files")
        button.click(on_generate, [first, last, num_frames, method, temperature, top_k, top_p,
                                   seed], [video, strip, files, status], api_name=API_NAME)
    return page


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise UserError(f"cannot serve on {HOST}:{port} ({error.strerror}); pass a free "
                            "--port.") from None


def serve(config: Any, workdir: str | pathlib.Path, *, port: int | None = None,
          example: tuple[str, str] | None = None, block: bool = True) -> Any:
    """Loads the models, then serves the page on HOST:`port`; returns the Gradio app."""
    port = DEFAULT_PORT if port is None else port
    if not 0 < port < 65536:
        raise UserError(f"--port={port} is not a TCP port; use 1..65535 (default {DEFAULT_PORT}).")
    _check_port_free(port)  # before loading the models
    generator = sample.load_generator(config, workdir)
    output_dir = tempfile.mkdtemp(prefix="ganime_demo_")
    atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
    inbetweener = InBetweener(generator, config.sample.get("fps", sample.DEFAULT_FPS), output_dir,
                              sample.choice(config)["direction"])
    page = build_page(inbetweener, config, example)
    allowed = [output_dir] + [str(pathlib.Path(p).parent) for p in example or ()]
    try:
        page.queue().launch(server_name=HOST, server_port=port, share=False, inbrowser=False,
                            prevent_thread_lock=True, allowed_paths=allowed, quiet=True)
    except OSError as error:
        raise UserError(f"cannot serve on {HOST}:{port} ({error}); pass a free --port.") from None
    print(f"serving the step-{generator.step} model at http://{HOST}:{port}/ (Ctrl-C stops)",
          flush=True)
    if block:
        page.block_thread()
    return page
