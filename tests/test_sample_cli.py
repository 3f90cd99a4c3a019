"""`--mode=sample` end to end on a tiny checkpointed tokenizer + GPT, image loading, errors."""
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import gpt_tiny, vqgan_tiny
from ganime_jax import cli, images
from ganime_jax.data import tfds_io, video_io
from ganime_jax.errors import UserError
from ganime_jax.models.vqgan import VQGAN
from stage2_helpers import gpt_workdir, random_params, save_checkpoint

HEIGHT, WIDTH = 16, 32  # vqgan_tiny frames: a 4 x 8 token grid
MAX_FRAMES = gpt_tiny.get_config().model.max_frames
NUM_FRAMES = gpt_tiny.get_config().sample.num_frames
REPO = pathlib.Path(__file__).resolve().parent.parent
CLIP_LENGTHS = (4, 6, 7)  # the held-out clips; the first is too short for NUM_FRAMES


def _tokenizer_workdir(path, height=HEIGHT, width=WIDTH):
    config = vqgan_tiny.get_config()
    config.data.update(height=height, width=width)
    frames = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    params = random_params(VQGAN(**config.model), frames, std=0.1)
    save_checkpoint(path, {"gen_params": params}, config)
    return str(path)


def gpt_config(tokenizer_workdir, data_root, **gpt):
    config = gpt_tiny.get_config()
    config.tokenizer.workdir = tokenizer_workdir
    config.data.update(data_root=data_root, dataset="tiny")
    config.model.gpt.update(**gpt)
    config.model.countdown_on_last_frame = False
    config.sample.update(method="top_k", top_k=8)
    return config


# gpt_config as a config file for main.py (the tokenizer workdir and data root filled in).
CONFIG_FILE = """from configs import gpt_tiny


def get_config():
    config = gpt_tiny.get_config()
    config.tokenizer.workdir = {tokenizer!r}
    config.data.update(data_root={data_root!r}, dataset="tiny")
    config.model.countdown_on_last_frame = False
    config.sample.update(method="top_k", top_k=8)
    return config
"""


def _smooth(height, width, seed):
    """A smooth random colour pattern (random pixels would not survive 4:2:0 video)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase, freq = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.3, 1, (3, 2))
    channels = [np.sin(2 * np.pi * (f[0] * x + f[1] * y) + p) for f, p in zip(freq, phase)]
    return np.round(127.5 + 100 * np.stack(channels, -1)).astype(np.uint8)


def _clips():
    for index, length in enumerate(CLIP_LENGTHS):
        frames = np.stack([_smooth(HEIGHT, WIDTH, 10 * index + t) for t in range(length)])
        yield {"frames": frames, "n_frames": length, "source": "ep", "shot_index": index,
               "clip_index": 0}


def _write_image(path, size, seed=0):
    Image.fromarray(_smooth(size[1], size[0], seed)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    data_root = str(root / "data")
    tfds_io.write_dataset(data_root, "tiny_clips", "clips", {"test": _clips()},
                          (HEIGHT, WIDTH, 3))
    config = gpt_config(_tokenizer_workdir(root / "vqgan"), data_root)
    workdir = gpt_workdir(root / "gpt", config)
    first = _write_image(root / "first.png", (96, 48), seed=1)
    last = _write_image(root / "last.jpg", (96, 48), seed=2)
    return dict(root=root, config=config, workdir=workdir, first=first, last=last)


def _sample(setup, config=None, workdir=None, mode="sample", **flags):
    flags = {"first": None, "last": None, "num_frames": None, "output": None, **flags}
    cli.run_mode(mode, config or setup["config"], workdir or setup["workdir"], **flags)


def _read_gif(path):
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


def test_two_images_give_an_mp4_and_a_gif(setup, capsys):
    _sample(setup, first=setup["first"], last=setup["last"])
    out = capsys.readouterr().out
    video = setup["workdir"] + "/samples/generated.mp4"
    gif = setup["workdir"] + "/samples/generated.gif"
    assert "note: resizing the 96x48 images" in out
    assert f"wrote {video}" in out and f"wrote {gif}" in out
    frames = np.stack(list(video_io.read_video(video)))
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert _read_gif(gif) == (NUM_FRAMES, (WIDTH, HEIGHT))
    ends = images.load_frame_pair(setup["first"], setup["last"], (HEIGHT, WIDTH, 3))
    # The clip opens and closes on the given (resized) frames, up to the video codec's error.
    error = np.array([[np.abs(frames[i].astype(int) - end).mean() for end in ends]
                      for i in (0, -1)])
    assert error[0, 0] < 6 and error[1, 1] < 6 and error[0, 1] > 20 and error[1, 0] > 20


def test_num_frames_flag_and_output_path(setup, capsys):
    output = setup["root"] / "out" / "clip.mp4"
    output.parent.mkdir()
    _sample(setup, first=setup["first"], last=setup["last"], num_frames=MAX_FRAMES,
            output=str(output))
    assert len(list(video_io.read_video(output))) == MAX_FRAMES
    assert _read_gif(output.with_suffix(".gif"))[0] == MAX_FRAMES
    assert f"wrote {output}" in capsys.readouterr().out


def test_without_images_it_writes_a_grid_of_held_out_clips(setup):
    output = setup["root"] / "grid.mp4"
    _sample(setup, output=str(output))
    frames = np.stack(list(video_io.read_video(output)))
    pad = 2  # image_grid's border
    clips = [c["frames"] for c in _clips() if c["n_frames"] >= NUM_FRAMES]
    assert frames.shape == (NUM_FRAMES, 2 * (HEIGHT + 2 * pad), 2 * (WIDTH + 2 * pad), 3)
    matched = []  # the bottom row holds the ground truth of two different long-enough clips
    for column in range(2):
        left = pad + column * (WIDTH + 2 * pad)
        truth = frames[:, HEIGHT + 3 * pad:-pad, left:left + WIDTH].astype(int)
        errors = [np.abs(truth - clip[:NUM_FRAMES]).mean() for clip in clips]
        assert min(errors) < 6
        matched.append(int(np.argmin(errors)))
    assert sorted(matched) == [0, 1]
    assert _read_gif(output.with_suffix(".gif"))[0] == NUM_FRAMES


def _raises(setup, match, config=None, workdir=None, **flags):
    with pytest.raises(UserError, match=match) as error:
        _sample(setup, config, workdir, **flags)
    assert "\n" not in str(error.value)


def test_image_errors(setup):
    root = setup["root"]
    (root / "bad.png").write_text("not an image")
    _raises(setup, "cannot read image .*missing.png: no such file", first=str(root / "missing.png"),
            last=setup["last"])
    _raises(setup, "cannot read image .*bad.png", first=setup["first"], last=str(root / "bad.png"))
    other = _write_image(root / "other.png", (100, 50))
    _raises(setup, "first image .* is 96x48 but the last image .* is 100x50",
            first=setup["first"], last=other)
    _raises(setup, "give both --first and --last", first=setup["first"])


@pytest.mark.parametrize("num_frames", [2, MAX_FRAMES + 1])
def test_unsupported_num_frames(setup, num_frames):
    _raises(setup, f"num_frames={num_frames} is not supported.*3 to {MAX_FRAMES}",
            first=setup["first"], last=setup["last"], num_frames=num_frames)


def test_held_out_clips_too_short(setup):
    _raises(setup, f"longest has {max(CLIP_LENGTHS)}.*smaller --num_frames",
            num_frames=MAX_FRAMES)


def test_checkpoint_and_config_errors(setup, tmp_path):
    root, config = setup["root"], setup["config"]
    data_root, tokenizer = config.data.data_root, config.tokenizer.workdir
    pair = dict(first=setup["first"], last=setup["last"])
    _raises(setup, "no GPT checkpoint in .*empty; train it", workdir=str(tmp_path / "empty"),
            **pair)
    _raises(setup, "is of stage 'vqgan', not a GPT", workdir=tokenizer, **pair)
    _raises(setup, "was trained with model.gpt=",
            config=gpt_config(tokenizer, data_root, n_embd=64), **pair)
    corrupt = gpt_workdir(tmp_path / "corrupt", config,
                           gpt_config(tokenizer, data_root, n_embd=64))
    _raises(setup, r"does not fit the model of the config: it holds \(9, 64\) for "
            r"state\[.params.\]\[.countdown.\] where the model has shape \(9, 32\)",
            workdir=corrupt, **pair)
    _raises(setup, "vocab_size 16 is smaller than the tokenizer's 32 codes",
            config=gpt_config(tokenizer, data_root, vocab_size=16), **pair)
    other_tokenizer = _tokenizer_workdir(tmp_path / "vqgan16", height=16, width=16)
    _raises(setup, "makes frames of 16 tokens but config.model.frame_tokens is 32",
            config=gpt_config(other_tokenizer, data_root), **pair)
    _raises(setup, "tokenizer workdir .*nowhere does not exist",
            config=gpt_config(str(tmp_path / "nowhere"), data_root), **pair)
    _raises(setup, "needs a stage-2 \\(gpt\\) config", config=vqgan_tiny.get_config(), **pair)
    _raises(setup, "--first only applies to --mode=sample", mode="train", **pair)
    greedy_best_of = gpt_config(tokenizer, data_root)
    greedy_best_of.sample.update(method="greedy", candidates=3)
    _raises(setup, "candidates=3 with greedy decoding draws 3 identical clips",
            config=greedy_best_of, **pair)
    _raises(setup, "--output=.*clip.avi must end in .mp4", output=str(root / "clip.avi"), **pair)


def test_load_image_converts_modes(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = images.load_image(tmp_path / "rgba.png")
    assert loaded.shape == (4, 6, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(loaded[3, 0], images.BACKGROUND)

    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "grey.png"),
                                  np.repeat(grey[..., None], 3, axis=-1))

    deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000 + 300)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "deep.png")[..., 1], deep >> 8)

    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "palette.gif")
    np.testing.assert_array_equal(images.load_image(tmp_path / "palette.gif"), rgba[..., :3])


def test_main_py_end_to_end(setup):
    root, config = setup["root"], setup["config"]
    config_file = root / "gpt_sample_config.py"
    config_file.write_text(CONFIG_FILE.format(tokenizer=config.tokenizer.workdir,
                                              data_root=config.data.data_root))
    command = [sys.executable, "main.py", f"--config={config_file}", "--config.sample.top_k=4",
               f"--workdir={setup['workdir']}", "--mode=sample", "--num_frames=6",
               f"--output={root / 'main.mp4'}", f"--first={setup['first']}",
               f"--last={setup['last']}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == [f"wrote {root / 'main.mp4'}",
                                             f"wrote {root / 'main.gif'}"]
    assert len(list(video_io.read_video(root / "main.mp4"))) == 6
    failed = subprocess.run(command[:-2] + ["--first=missing.png", "--last=missing.png"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: cannot read image missing.png: no such file.")


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_unwritable_outputs_and_damaged_checkpoints_fail_before_any_work(setup, tmp_path):
    pair = dict(first=setup["first"], last=setup["last"])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "folder").mkdir()
    # The output checks come first: the workdir named here holds no checkpoint at all.
    nowhere = str(tmp_path / "no_run")
    _raises(setup, "--output=.*folder is a folder; name the MP4 to write, e.g. .*generated.mp4",
            output=str(tmp_path / "folder"), workdir=nowhere, **pair)
    _raises(setup, "the folder of --output .*a_file is a file, not a folder",
            output=str(a_file / "clip.mp4"), workdir=nowhere, **pair)
    _raises(setup, "--workdir .*a_file is a file, not a folder", workdir=str(a_file),
            mode="train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]

    for damage in ("data", "metadata"):
        workdir = tmp_path / f"damaged_{damage}"
        shutil.copytree(setup["workdir"], workdir)
        state = next((workdir / "checkpoints").iterdir()) / "state"
        target = _largest_file(state) if damage == "data" else state / "_METADATA"
        target.write_bytes(target.read_bytes()[:50])
        _raises(setup, r"the checkpoint .*damaged_.*checkpoints/1 is damaged or unreadable "
                r"\((ValueError|JSONDecodeError): .*\); restore it from a copy",
                workdir=str(workdir), **pair)


def test_a_one_pixel_image_is_refused(setup, tmp_path):
    tiny = _write_image(tmp_path / "tiny.png", (1, 1))
    _raises(setup, "a 1x1 frame is too small to crop to the 32x16 aspect ratio", first=tiny,
            last=tiny)


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "clip.gif"
    stale = tmp_path / f".clip.{'0' * 32}.tmp.gif"
    stale.write_bytes(b"")  # what a run killed mid-write leaves
    other = tmp_path / f".other.{'0' * 32}.tmp.gif"  # another file's: not ours to remove
    other.write_bytes(b"")
    video_io.write_gif(target, np.zeros((2, 4, 4, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.gif", other.name])
