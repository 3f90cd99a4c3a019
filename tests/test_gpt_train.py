"""Stage-2 training: the parallel objective against per-frame loops, masks, accumulation,
sharding, HF and codebook initialisation, context noise, sample GIFs, configs, and
kill-and-resume through main.py."""
import functools
import json
import pathlib

import flax.linen as nn
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from configs import gpt_demo, gpt_kny, gpt_mnist_demo, gpt_tiny
from ganime_jax import conditioning, config_check
from ganime_jax.data import tfds_io
from ganime_jax.errors import UserError
from ganime_jax.models.frame_layouts import LAYOUTS
from ganime_jax.tokenizer import load_tokenizer
from ganime_jax.train import codebook_embedding, gpt_step
from ganime_jax.train.gpt_task import GPTTask, SampleWriter, build_fns, check_config
from ganime_jax.train.summary import MetricWriter
from resume_helpers import check_killed_run_resumes, main_command
from stage2_helpers import assert_same_training, mesh_of, steps_reduce_the_loss, train_on_batch

pytestmark = pytest.mark.costly(seconds=200)

N_FRAMES = np.array([8, 5, 3, 7, 8, 4, 6, 8], np.int32)  # one clip per fake device


def _config(layout: str = "window", **optimizer) -> ml_collections.ConfigDict:
    config = gpt_tiny.get_config()
    config.tokenizer.workdir = "unused"
    config.model.layout = layout
    config.model.gpt.update(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    config.optimizer.update(optimizer)
    return config


@functools.cache
def _model_and_params(layout: str):
    fns = build_fns(_config(layout))
    params = jax.jit(lambda r: nn.unbox(gpt_step.init_state(r, fns)))(jax.random.key(0)).params
    return fns.model, params


@pytest.fixture(scope="module")
def setup():
    """Model (window layout), parameters and a padded batch of clips of different lengths."""
    config = _config()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.model.gpt.vocab_size,
                          (len(N_FRAMES), config.data.max_frames, config.model.frame_tokens))
    for clip, n in zip(tokens, N_FRAMES):
        clip[n:] = 0
    model, params = _model_and_params("window")
    return config, model, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(N_FRAMES)


def _mean(sums: gpt_step.Sums) -> tuple[float, float]:
    return float(sums.loss / sums.count), float(sums.correct / sums.count)


def test_conditioning_convention():
    assert conditioning.context_indices(1, 3) == [0, 0, 0]
    assert conditioning.context_indices(5, 3) == [2, 3, 4]
    assert conditioning.remaining_frames(3, 5) == 1
    tokens = jnp.arange(2 * 6).reshape(2, 6, 1)
    tf = conditioning.teacher_forcing_inputs(tokens, jnp.array([6, 4]), 2)
    np.testing.assert_array_equal(tf.last[:, 0], [5, 9])
    np.testing.assert_array_equal(tf.context[1, :, :, 0], [[6, 6], [6, 7], [7, 8], [8, 9]])
    np.testing.assert_array_equal(tf.remaining, [[4, 3, 2, 1], [2, 1, 0, 0]])
    np.testing.assert_array_equal(tf.valid, [[1, 1, 1, 1], [1, 1, 0, 0]])
    context = conditioning.push_frame(conditioning.initial_context(tokens[:, 0], 2), tokens[:, 1])
    np.testing.assert_array_equal(context[:, :, 0], [[0, 1], [6, 7]])


def test_copy_baselines_count_only_valid_targets():
    # Clip 0 (5 frames, tokens per frame [a, b]): targets t = 1, 2, 3. Clip 1 has 4 real frames
    # (targets 1, 2) and one padded frame whose values must not count.
    tokens = np.array([[[1, 1], [1, 2], [3, 2], [3, 3], [4, 4]],
                       [[5, 5], [5, 5], [6, 6], [6, 6], [9, 9]]])
    result = conditioning.copy_baseline_accuracies(tokens, np.array([5, 4]))
    # copy previous: clip 0 targets [1,2] [3,2] [3,3] vs [1,1] [1,2] [3,2] -> 1 + 1 + 1 of 6;
    # clip 1 targets [5,5] [6,6] vs [5,5] [5,5] -> 2 of 4.
    assert result["copy_previous"] == 5 / 10
    # nearer end: clip 0 (middle 2) guesses first, first, last = [1,1] [1,1] [4,4] -> 1 of 6;
    # clip 1 (middle 1.5) guesses first, last = [5,5] [6,6] -> 4 of 4.
    assert result["nearer_end"] == 5 / 10


def test_teacher_forced_loss_equals_a_per_frame_loop(setup):
    config, model, params, tokens, n_frames = setup
    sums = jax.jit(gpt_step.teacher_forced_sums, static_argnums=(0, 5))(
        model, params, tokens, n_frames, jax.random.key(0), False)
    apply = jax.jit(model.apply)
    k = config.model.n_frames_before
    losses, correct = [], []
    for clip, n in zip(np.asarray(tokens), N_FRAMES):
        for t in range(1, n - 1):
            context = clip[conditioning.context_indices(t, k)][None]
            logits = apply({"params": params}, clip[n - 1][None], context,
                           jnp.array([conditioning.remaining_frames(t, n)]))[0]
            log_probs = jax.nn.log_softmax(logits)
            losses.extend(-np.take_along_axis(np.asarray(log_probs), clip[t][:, None], 1)[:, 0])
            correct.extend(np.argmax(logits, -1) == clip[t])
    assert float(sums.count) == len(losses)
    np.testing.assert_allclose(_mean(sums), (np.mean(losses), np.mean(correct)), rtol=1e-5)


def _own_prediction_loop(model, params, tokens, n_frames, k):
    """The second phase written frame by frame in Python: argmax frames become the context."""
    context = jnp.repeat(tokens[:, :1], k, axis=1)
    last = tokens[jnp.arange(len(n_frames)), n_frames - 1]
    loss = correct = count = 0.0
    for t in range(1, tokens.shape[1] - 1):
        valid = (t <= n_frames - 2).astype(jnp.float32)[:, None]
        logits = model.apply({"params": params}, last, context, jnp.maximum(n_frames - 1 - t, 0))
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, t, :, None], -1)[..., 0]
        prediction = jnp.argmax(logits, -1)
        loss += jnp.sum(ce * valid)
        correct += jnp.sum((prediction == tokens[:, t]) * valid)
        count += jnp.sum(valid) * tokens.shape[-1]
        context = jnp.concatenate([context[:, 1:], jax.lax.stop_gradient(prediction)[:, None]], 1)
    return loss / count, correct / count


def test_own_prediction_scan_equals_a_frame_by_frame_loop(setup):
    config, model, params, tokens, n_frames = setup
    k = config.model.n_frames_before

    def scan_loss(p):
        sums = gpt_step.own_prediction_sums(model, p, tokens, n_frames, jax.random.key(0), False)
        return sums.loss / sums.count, sums.correct / sums.count

    (loss, accuracy), grads = jax.jit(jax.value_and_grad(scan_loss, has_aux=True))(params)
    (ref_loss, ref_accuracy), ref_grads = jax.jit(jax.value_and_grad(
        lambda p: _own_prediction_loop(model, p, tokens, n_frames, k), has_aux=True))(params)
    np.testing.assert_allclose((loss, accuracy), (ref_loss, ref_accuracy), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("own_predictions", [False, True])
def test_padded_frames_contribute_nothing(setup, layout, own_predictions):
    _, _, _, tokens, n_frames = setup
    model, params = _model_and_params(layout)
    sums_fn = gpt_step.objective(model, own_predictions)

    @jax.jit
    def loss_and_grads(batch_tokens):
        def loss(p):
            sums = sums_fn(model, p, batch_tokens, n_frames, jax.random.key(0), False)
            return sums.loss / sums.count
        return jax.value_and_grad(loss)(params)

    padding = np.arange(tokens.shape[1])[None, :] >= N_FRAMES[:, None]
    noise = np.random.default_rng(1).integers(1, 32, tokens.shape)
    changed = jnp.where(padding[..., None], noise, tokens)
    assert not np.array_equal(changed, tokens)
    loss, grads = loss_and_grads(tokens)
    changed_loss, changed_grads = loss_and_grads(changed)
    np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(changed_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sampled_contexts_follow_the_temperature(setup, layout):
    """Own-prediction contexts drawn at a vanishing temperature are the argmax frames; at
    temperature 1 they depend on the key, and the same key draws the same frames."""
    _, _, _, tokens, n_frames = setup
    model, params = _model_and_params(layout)

    @functools.partial(jax.jit, static_argnums=1)
    def mean_loss(seed, temperature):
        sums = gpt_step.objective(model, True, temperature)(
            model, params, tokens, n_frames, jax.random.key(seed), False)
        return sums.loss / sums.count

    def loss(seed, temperature):
        return float(mean_loss(seed, temperature))

    greedy = loss(0, 0.0)
    np.testing.assert_allclose(loss(1, 1e-6), greedy, rtol=1e-6)
    sampled = loss(0, 1.0)
    assert loss(0, 1.0) == sampled
    assert len({greedy, sampled, loss(1, 1.0)}) == 3


def test_noisy_context_keeps_the_first_frame_and_draws_a_rate_per_clip():
    frames = jnp.zeros((64, 5, 256), jnp.int32)
    noisy = np.asarray(gpt_step.noisy_context(frames, 0.8, 1000, jax.random.key(0)))
    np.testing.assert_array_equal(noisy[:, 0], 0)
    rates = (noisy[:, 1:] != 0).mean(axis=(1, 2))  # a replaced token is 0 once in 1000
    assert rates.max() <= 0.8 + 0.05 and rates.min() < 0.1
    assert np.mean(rates) == pytest.approx(0.4, abs=0.06)
    assert noisy.max() < 1000 and len(np.unique(noisy)) > 900
    np.testing.assert_array_equal(gpt_step.noisy_context(frames, 0.0, 1000, jax.random.key(0)),
                                  frames)


def test_context_noise_trains_on_noisy_contexts_and_evaluates_clean(setup):
    """With noise the training loss changes (the contexts do) and depends on the key; held-out
    sums (train=False) ignore it."""
    _, _, _, tokens, n_frames = setup
    model, params = _model_and_params("sequence")

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def mean_loss(seed, noise, train):
        sums = gpt_step.objective(model, False, context_noise=noise)(
            model, params, tokens, n_frames, jax.random.key(seed), train)
        return sums.loss / sums.count

    clean = float(mean_loss(0, 0.0, True))
    noisy = float(mean_loss(0, 0.9, True))
    assert noisy != clean and float(mean_loss(1, 0.9, True)) != noisy
    assert float(mean_loss(0, 0.9, True)) == noisy
    assert float(mean_loss(0, 0.9, False)) == float(mean_loss(0, 0.0, False))
    config = _config()
    config.train.context_noise = 0.5
    with pytest.raises(UserError, match="layout='sequence'"):
        check_config(config, mesh_of(1, 1))
    config = _config("sequence")
    config.train.context_noise = 1.5
    with pytest.raises(UserError, match=r"context_noise=1.5"):
        check_config(config, mesh_of(1, 1))


def test_own_prediction_temperature_must_not_be_negative():
    config = _config()
    config.train.own_prediction_temperature = -0.5
    with pytest.raises(UserError, match="own_prediction_temperature"):
        check_config(config, mesh_of(1, 1))


def test_best_of_k_for_the_sample_gifs_is_checked_before_training():
    config = _config()
    config.sample.update(method="top_k", candidates=0)
    with pytest.raises(UserError, match="candidates must be an integer >= 1"):
        check_config(config, mesh_of(1, 1))


def _linear_config(layout: str = "window", **optimizer) -> ml_collections.ConfigDict:
    """A large Adam eps makes the update linear in the gradient (see test_vqgan_train.py), so
    the rounding noise of gradients that are zero in theory cannot turn into full steps; with
    lr=1 and many planned steps (a flat schedule) it is plain gradient descent."""
    config = _config(layout, eps=1.0, lr=1.0, init_lr=1.0, **optimizer)
    config.train.num_steps = 1000
    return config


@pytest.fixture(scope="module", params=LAYOUTS)
def one_device(request, setup):
    """Per layout: parameters and metrics after a teacher-forced step, then an own-prediction
    step, and the task and state to go on from."""
    config = _linear_config(layout=request.param)
    steps = [0, config.train.stop_ground_truth_after_step]
    params, history, task, state = train_on_batch(config, mesh_of(1, 1), setup[3], setup[4],
                                                  steps)
    return config, steps, params, history, task, state


def test_sharded_step_equals_one_device_step(setup, one_device):
    config, steps, params, history, _, _ = one_device
    assert [h["own_predictions"] for h in history] == [0.0, 1.0]
    sharded_params, sharded_history, _, state = train_on_batch(config, mesh_of(4, 2), setup[3],
                                                               setup[4], steps)
    wte = state.params["lm"]["wte"]
    assert wte.sharding.shard_shape(wte.shape) == (32, 16)  # "embed" split over fsdp=2
    assert_same_training((params, history), (sharded_params, sharded_history))


def test_gradient_accumulation_equals_one_batch(setup, one_device):
    config, steps, params, history, _, _ = one_device
    config = ml_collections.ConfigDict(config.to_dict())
    config.optimizer.grad_accum_steps = 2
    accumulated, accumulated_history, _, _ = train_on_batch(config, mesh_of(1, 1), setup[3],
                                                            setup[4], steps[:1])
    assert_same_training((params[:1], history[:1]), (accumulated, accumulated_history))


def test_steps_reduce_the_loss(setup, one_device):
    *_, task, state = one_device
    losses = steps_reduce_the_loss(task, state, setup[3].shape, setup[4])
    assert losses[-1] < 0.7 * losses[0] and np.all(np.isfinite(losses))


def _save_hf_gpt2(directory: pathlib.Path, vocab: int, positions: int, width: int, layers: int,
                  heads: int) -> dict[str, np.ndarray]:
    """A random GPT-2 in Hugging Face's layout (Conv1D weights are (in, out)); returns it."""
    rng = np.random.default_rng(3)
    shapes = {"wte.weight": (vocab, width), "wpe.weight": (positions, width),
              "ln_f.weight": (width,), "ln_f.bias": (width,)}
    for i in range(layers):
        shapes.update({f"h.{i}.{name}": shape for name, shape in {
            "ln_1.weight": (width,), "ln_1.bias": (width,), "ln_2.weight": (width,),
            "ln_2.bias": (width,), "attn.c_attn.weight": (width, 3 * width),
            "attn.c_attn.bias": (3 * width,), "attn.c_proj.weight": (width, width),
            "attn.c_proj.bias": (width,), "mlp.c_fc.weight": (width, 4 * width),
            "mlp.c_fc.bias": (4 * width,), "mlp.c_proj.weight": (4 * width, width),
            "mlp.c_proj.bias": (width,)}.items()})
    tensors = {f"transformer.{k}": rng.normal(size=v).astype(np.float32) for k, v in shapes.items()}
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(dict(
        model_type="gpt2", vocab_size=vocab, n_positions=positions, n_embd=width,
        n_layer=layers, n_head=heads)))
    return tensors


def test_init_from_local_hf_gpt2(tmp_path):
    config = _config()
    gpt = config.model.gpt
    tensors = _save_hf_gpt2(tmp_path, 50, 128, gpt.n_embd, gpt.n_layer, gpt.n_head)
    config.model.init_from_hf = str(tmp_path)
    task = GPTTask(config, mesh_of(1, 1))
    lm = jax.device_get(task.init_state(jax.random.key(0)).params["lm"])
    np.testing.assert_array_equal(lm["wte"], tensors["transformer.wte.weight"][:32])
    np.testing.assert_array_equal(lm["wpe"], tensors["transformer.wpe.weight"][:96])
    np.testing.assert_array_equal(lm["h_1"]["mlp"]["c_fc"]["kernel"],
                                  tensors["transformer.h.1.mlp.c_fc.weight"])
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf_config, "layer_norm_epsilon": 1e-6}))
    with pytest.raises(UserError, match="layer_norm_epsilon"):
        task.init_state(jax.random.key(0))


def test_mix_codebook_keeps_the_codes_geometry_at_the_embeddings_scale():
    embeddings = jax.random.normal(jax.random.key(0), (40, 32)) * 0.02
    codes = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    key = jax.random.key(1)
    assert codebook_embedding.mix_codebook(embeddings, codes, 0.0, key) is embeddings
    pure = np.asarray(codebook_embedding.mix_codebook(embeddings, codes, 1.0, key))
    np.testing.assert_array_equal(pure[30:], embeddings[30:])  # past the codebook: kept
    # A scaled isometry of the centred codes: all pairwise distances in one ratio.
    def distances(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(x), 1)]
    ratio = distances(pure[:30]) / distances(codes - codes.mean(0))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert pure[:30].std() == pytest.approx(float(embeddings.std()), rel=0.05)
    half = np.asarray(codebook_embedding.mix_codebook(embeddings, codes, 0.5, key))
    np.testing.assert_allclose(half[:30], np.sqrt(0.5) * (embeddings[:30] + pure[:30]),
                               atol=1e-6)
    with pytest.raises(UserError, match="n_embd"):
        codebook_embedding.mix_codebook(embeddings[:, :4], codes, 0.5, key)
    with pytest.raises(UserError, match="all equal"):
        codebook_embedding.mix_codebook(embeddings, np.ones((30, 6), np.float32), 0.5, key)


def test_init_mixes_the_tokenizers_codebook_into_the_embeddings(stage1_workdirs):
    config = _config()
    config.tokenizer.workdir = stage1_workdirs["workdir"]
    plain = jax.device_get(GPTTask(config, mesh_of(1, 1)).init_state(jax.random.key(0)).params)
    config.model.codebook_embedding_share = 1.0
    task = GPTTask(config, mesh_of(2, 4))
    mixed = jax.device_get(task.init_state(jax.random.key(0)).params)
    codes = codebook_embedding.tokenizer_codes(load_tokenizer(config.tokenizer.workdir))
    count = len(codes)
    assert count <= config.model.gpt.vocab_size
    wte = mixed["lm"]["wte"]
    # The embeddings' Gram matrix is the centred codes', up to one scale factor.
    centred = codes - codes.mean(0)
    gram, expected = wte[:count] @ wte[:count].T, centred @ centred.T
    np.testing.assert_allclose(gram / gram[0, 0], expected / expected[0, 0], atol=1e-4)
    np.testing.assert_array_equal(wte[count:], plain["lm"]["wte"][count:])
    for name in ("wpe", "h_0"):  # nothing but the token embeddings changes
        jax.tree.map(np.testing.assert_array_equal, mixed["lm"][name], plain["lm"][name])
    for field, value, match in (("codebook_embedding_share", 1.5, r"\[0, 1\]"),
                                ("init_from_hf", "some/dir", "use one of them")):
        bad = ml_collections.ConfigDict(config.to_dict())
        bad.model[field] = value
        with pytest.raises(UserError, match=match):
            check_config(bad, mesh_of(1, 1))
    config.tokenizer.workdir = ""
    with pytest.raises(UserError, match="tokenizer.workdir"):
        check_config(config, mesh_of(1, 1))


def test_sample_writer_writes_generated_and_ground_truth(setup, stage1_workdirs, tmp_path):
    config, model, params, _, _ = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.data_root = stage1_workdirs["data_root"]
    config.tokenizer.workdir = stage1_workdirs["workdir"]
    writer = MetricWriter(tmp_path)
    sample_writer = SampleWriter(config, mesh_of(1, 1), model, tmp_path)
    sample_writer.write(params, 3, writer)
    writer.close()
    frames = iio.imread(tmp_path / "samples" / "train_step_00000003.gif")[..., :3]
    num_clips, num_frames = config.sample.num_clips, config.sample.num_frames
    assert frames.shape[0] == num_frames
    assert frames.shape[1:3] == (3 * (16 + 4), num_clips * (32 + 4))  # rows: generated,
    # reconstructed, ground truth; each image padded by 2 pixels on every side

    def cell(t: int, row: int, clip: int) -> np.ndarray:
        top, left = row * (16 + 4) + 2, clip * (32 + 4) + 2
        return frames[t, top:top + 16, left:left + 32].astype(np.float32)

    truth = sample_writer.held_out_clips().astype(np.float32)
    # GIF palettes quantise colours, so cells match their source to a few levels, not exactly;
    # a frame of another clip or time is much further away.
    for clip in range(num_clips):
        for t in range(num_frames):
            assert np.abs(cell(t, 2, clip) - truth[clip, t]).mean() < 6  # the ground truth
        for t in (0, num_frames - 1):  # generation starts and ends on the given frames
            assert np.abs(cell(t, 0, clip) - truth[clip, t]).mean() < 6
    assert np.abs(truth[0, 0] - truth[1, 0]).mean() > 20
    # The clips come from `eval.split` (the held-out figures' split), not data.eval_split.
    config.eval.split = "train"
    from_train = SampleWriter(config, mesh_of(1, 1), model, tmp_path).held_out_clips()
    records = tfds_io.first_records(config.data.data_root,
                                    tfds_io.variant_name(config.data.dataset, "clips"), "train",
                                    min_frames=num_frames, count=num_clips)
    np.testing.assert_array_equal(from_train, [r["frames"][:num_frames] for r in records])
    assert not np.array_equal(from_train, truth)


def test_configs_are_complete_and_checked():
    reference = gpt_kny.get_config()
    for module in (gpt_tiny, gpt_demo, gpt_mnist_demo):
        config = module.get_config()
        config.tokenizer.workdir = "w"
        config_check.check_fields(config, reference, "configs/gpt_kny.py")
        build_fns(config)
    config = _config()
    config.data.min_frames = 2
    with pytest.raises(UserError, match="min_frames"):
        check_config(config, mesh_of(1, 1))
    config = _config(grad_accum_steps=3)
    with pytest.raises(UserError, match="grad_accum_steps"):
        check_config(config, mesh_of(1, 1))


def test_killed_run_resumes_with_identical_losses(stage1_workdirs, tmp_path):
    data_root = tmp_path / "datasets"
    data_root.mkdir()
    (data_root / "tiny_anime_clips").symlink_to(
        pathlib.Path(stage1_workdirs["data_root"]) / "tiny_anime_clips")
    num_steps = gpt_tiny.get_config().train.num_steps

    def command(workdir: pathlib.Path) -> list[str]:
        return main_command("configs/gpt_tiny.py", workdir, f"--config.data.data_root={data_root}",
                            f"--config.tokenizer.workdir={stage1_workdirs['workdir']}",
                            "--config.train.sample_every=0", "--config.eval.every=1000")

    expected = check_killed_run_resumes(command, tmp_path, num_steps,
                                        ("loss", "accuracy", "grad_norm"))
    assert [expected[s]["own_predictions"] for s in (1, num_steps)] == [0.0, 1.0]
