"""GPT-2 trunk, GANime transformer and HF import: parity with transformers' PyTorch GPT-2."""
import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ganime_jax.convert.hf_gpt2 import load_hf_gpt2, overlay_params
from ganime_jax.errors import UserError
from ganime_jax.models.ganime_transformer import (
    LM_PARAMS, GANimeTransformer, ganime_transformer_from_config)
from ganime_jax.models.gpt import (GPT2Config, GPT2LM, LayerStates, causal_mask,
                                   explicit_attention, gpt_preset)
from ganime_jax import mesh as mesh_lib

VOCAB, WIDTH, LAYERS, HEADS, POSITIONS = 128, 64, 2, 4, 64
BATCH, LENGTH = 8, 24  # 8 rows: one per fake device in the sharded test
GANIME_BATCH = 2
FRAME_TOKENS, FRAMES_BEFORE, MAX_FRAMES = 8, 2, 10
NO_DROPOUT = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _init_key() -> jax.Array:
    """An "rbg" key: initialisers compile about twice as fast as with threefry on CPU."""
    return jax.random.key(0, impl="rbg")


def _save_hf_gpt2(directory, seed: int, tied: bool) -> None:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF inits biases to 0 and norms to 1: perturb everything.
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)


def _torch_logits(directory, tokens: np.ndarray) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)


@pytest.fixture(scope="module")
def hf_tied(tmp_path_factory, tokens):
    """A saved tied-head HF checkpoint and PyTorch's logits for `tokens`."""
    directory = tmp_path_factory.mktemp("hf_tied")
    _save_hf_gpt2(directory, seed=0, tied=True)
    return directory, _torch_logits(directory, tokens)


@pytest.fixture(scope="module")
def hf_untied(tmp_path_factory, tokens):
    directory = tmp_path_factory.mktemp("hf_untied")
    _save_hf_gpt2(directory, seed=1, tied=False)
    return directory, _torch_logits(directory, tokens)


@pytest.fixture(scope="module")
def tiny_lm(hf_tied):
    """Tied tiny GPT2LM with the imported weights, and its jitted apply."""
    params, fields = load_hf_gpt2(hf_tied[0])
    model = GPT2LM(GPT2Config.from_dict(fields))
    return model, params, jax.jit(model.apply, static_argnames=("train", "return_kv"))


def test_parity_with_pytorch_tied(hf_tied, tiny_lm, tokens):
    _, params, apply = tiny_lm
    ours = np.asarray(apply({"params": params}, tokens))
    np.testing.assert_allclose(ours, hf_tied[1], atol=1e-4, rtol=1e-4)


def test_parity_with_pytorch_untied_scanned_remat(hf_untied, tokens):
    params, fields = load_hf_gpt2(hf_untied[0], scan_layers=True)
    assert params["lm_head"]["kernel"].shape == (WIDTH, VOCAB)
    assert params["h"]["attn"]["c_attn"]["kernel"].shape == (LAYERS, WIDTH, 3, HEADS, WIDTH // HEADS)
    model = GPT2LM(GPT2Config.from_dict({**fields, "remat": "dots_saveable"}))
    ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
    np.testing.assert_allclose(ours, hf_untied[1], atol=1e-4, rtol=1e-4)


def test_causal_masking(tiny_lm, tokens):
    _, params, apply = tiny_lm
    changed = tokens.copy()
    changed[:, 10] = (changed[:, 10] + 1) % VOCAB
    a = np.asarray(apply({"params": params}, tokens))
    b = np.asarray(apply({"params": params}, changed))
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-4


def test_bfloat16_close_to_float32(tiny_lm, tokens):
    model, params, apply = tiny_lm
    bf16 = GPT2LM(dataclasses.replace(model.config, dtype="bfloat16"))
    low = np.asarray(jax.jit(bf16.apply)({"params": params}, tokens))
    high = np.asarray(apply({"params": params}, tokens))
    assert low.dtype == np.float32
    assert np.abs(low - high).max() < 0.05 * np.abs(high).max()
    assert np.mean(low.argmax(-1) == high.argmax(-1)) > 0.9


def test_remat_same_output_and_gradients(tokens):
    cfg = GPT2Config(**gpt_preset("tiny"), **NO_DROPOUT)
    variables = jax.jit(GPT2LM(cfg).init)(_init_key(), tokens)

    def loss_and_grad(config):
        def loss(v):
            logits = GPT2LM(config).apply(v, tokens)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
        return jax.value_and_grad(loss)

    remat_cfg = dataclasses.replace(cfg, remat=True)
    assert "remat" in str(jax.make_jaxpr(loss_and_grad(remat_cfg))(variables))
    plain = jax.jit(loss_and_grad(cfg))(variables)
    remat = jax.jit(loss_and_grad(remat_cfg))(variables)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), nn.unbox(remat[1]),
                 nn.unbox(plain[1]))


def test_dropout_only_in_training(tiny_lm, tokens):
    model, params, apply = tiny_lm
    assert model.config.attn_pdrop > 0  # HF's default rates came with the checkpoint
    rngs = {"dropout": jax.random.key(3)}
    train_a = apply({"params": params}, tokens, train=True, rngs=rngs)
    train_b = apply({"params": params}, tokens, train=True, rngs=rngs)
    np.testing.assert_array_equal(train_a, train_b)
    assert np.abs(train_a - apply({"params": params}, tokens)).max() > 1e-3


def test_explicit_attention_matches_fused():
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 6, 4, 8)).astype(np.float32)
    fused = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")(
        q, k, v, is_causal=True)
    explicit = jax.jit(explicit_attention)(q, k, v, causal_mask(6, 6))
    np.testing.assert_allclose(explicit, fused, atol=1e-5)


def test_past_kv_matches_full_sequence(tiny_lm, tokens):
    _, params, apply = tiny_lm
    full, kv = apply({"params": params}, tokens, return_kv=True)
    assert kv[0].shape == (LAYERS, BATCH, LENGTH, HEADS, WIDTH // HEADS)
    prefix = jax.tree.map(lambda x: x[:, :, :16], kv)
    tail = apply({"params": params}, tokens[:, 16:], past_kv=prefix)
    np.testing.assert_allclose(tail, full[:, 16:], atol=1e-5)
    per_layer = LayerStates((prefix[0][i], prefix[1][i]) for i in range(LAYERS))
    np.testing.assert_array_equal(
        apply({"params": params}, tokens[:, 16:], past_kv=per_layer), tail)


def test_layer_states_past_in_scanned_layers(tokens):
    """Scanned layers take a per-layer past too (stacked for the scan): the same logits."""
    model = GPT2LM(GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH,
                              n_layer=LAYERS, n_head=HEADS, scan_layers=True, **NO_DROPOUT))
    params = jax.jit(model.init)(_init_key(), tokens[:, :16])["params"]
    apply = jax.jit(model.apply, static_argnames="return_kv")
    _, prefix = apply({"params": params}, tokens[:, :16], return_kv=True)
    per_layer = LayerStates((prefix[0][i], prefix[1][i]) for i in range(LAYERS))
    np.testing.assert_allclose(apply({"params": params}, tokens[:, 16:], past_kv=per_layer),
                               apply({"params": params}, tokens[:, 16:], past_kv=prefix),
                               atol=1e-6)


def test_hf_vocab_and_position_policies(hf_tied):
    hf_tied = hf_tied[0]
    params, fields = load_hf_gpt2(hf_tied, vocab_size=100, n_positions=32)
    assert params["wte"].shape == (100, WIDTH) and params["wpe"].shape == (32, WIDTH)
    assert (fields["vocab_size"], fields["n_positions"]) == (100, 32)
    full, _ = load_hf_gpt2(hf_tied)
    np.testing.assert_array_equal(params["wte"], full["wte"][:100])

    reinit, fields = load_hf_gpt2(hf_tied, vocab_size=1000, vocab_policy="reinit")
    assert "wte" not in reinit
    model = GPT2LM(GPT2Config.from_dict({**fields, **NO_DROPOUT}))
    fresh = jax.jit(model.init)(_init_key(), jnp.zeros((1, 4), jnp.int32))["params"]
    merged = overlay_params(fresh, reinit)
    np.testing.assert_array_equal(nn.unbox(merged)["wte"], nn.unbox(fresh)["wte"])
    np.testing.assert_array_equal(nn.unbox(merged)["h_1"]["mlp"]["c_fc"]["kernel"],
                                  reinit["h_1"]["mlp"]["c_fc"]["kernel"])
    assert isinstance(merged["wpe"], nn.Partitioned)

    with pytest.raises(UserError, match="vocab_policy='reinit'"):
        load_hf_gpt2(hf_tied, vocab_size=1000)
    with pytest.raises(UserError, match="vocab_policy"):
        load_hf_gpt2(hf_tied, vocab_policy="drop")
    with pytest.raises(UserError, match="shape"):
        overlay_params(fresh, full)  # 128-row embedding into a 1000-row model


def test_hf_load_errors(hf_tied, tmp_path):
    hf_tied = hf_tied[0]
    with pytest.raises(UserError, match="does not exist"):
        load_hf_gpt2(tmp_path / "nowhere")
    with pytest.raises(UserError, match="config.json"):
        load_hf_gpt2(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(hf_tied, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "n_inner": 32}))
    with pytest.raises(UserError, match="c_fc.weight"):
        load_hf_gpt2(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        load_hf_gpt2(broken)


def test_hf_unprefixed_and_sharded_checkpoint(hf_tied, tmp_path):
    """GPT2Model-style names (no `transformer.`) split over two safetensors files."""
    directory, _ = hf_tied
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    names = sorted(tensors)
    shards = {"part-1.safetensors": names[::2], "part-2.safetensors": names[1::2]}
    for file, keys in shards.items():
        safetensors.numpy.save_file(
            {k.removeprefix("transformer."): tensors[k] for k in keys}, tmp_path / file)
    weight_map = {k.removeprefix("transformer."): f for f, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    split, _ = load_hf_gpt2(tmp_path)
    whole, _ = load_hf_gpt2(directory)
    jax.tree.map(np.testing.assert_array_equal, split, whole)


def _ganime_model(countdown_on_last_frame: bool = True) -> GANimeTransformer:
    return GANimeTransformer(
        gpt=GPT2Config(**gpt_preset("tiny"), **NO_DROPOUT, scan_layers=True),
        frame_tokens=FRAME_TOKENS,
        n_frames_before=FRAMES_BEFORE, max_frames=MAX_FRAMES,
        countdown_on_last_frame=countdown_on_last_frame)


@pytest.fixture(scope="module")
def ganime():
    """Jitted applies for both countdown placements (they share parameters), variables, inputs."""
    rng = np.random.default_rng(1)
    last = jnp.asarray(rng.integers(0, VOCAB, (GANIME_BATCH, FRAME_TOKENS)), jnp.int32)
    context = jnp.asarray(
        rng.integers(0, VOCAB, (GANIME_BATCH, FRAMES_BEFORE, FRAME_TOKENS)), jnp.int32)
    variables = jax.jit(_ganime_model().init)(
        _init_key(), last, context, jnp.zeros((GANIME_BATCH,), jnp.int32))
    applies = {flag: jax.jit(_ganime_model(flag).apply, static_argnames="method")
               for flag in (True, False)}
    return applies, variables, last, context


def test_ganime_logits_and_countdown(ganime):
    applies, variables, last, context = ganime
    assert set(variables["params"]) == {"countdown", "frame_position", "frame_slot", LM_PARAMS}
    at_3 = applies[True](variables, last, context, jnp.array([3, 3]))
    assert at_3.shape == (GANIME_BATCH, FRAME_TOKENS, VOCAB)
    mixed = applies[True](variables, last, context, jnp.array([3, 4]))
    np.testing.assert_allclose(mixed[0], at_3[0], atol=1e-6)
    assert np.abs(mixed[1] - at_3[1]).max() > 1e-4
    model = _ganime_model()
    with pytest.raises(UserError, match="context tokens"):
        model.apply(variables, last, context[:, :1], jnp.array([3, 3]))
    with pytest.raises(UserError, match="remaining"):
        model.apply(variables, last, context, jnp.array(3))


@pytest.mark.parametrize("countdown_on_last_frame", [True, False])
def test_ganime_prefix_cache_matches_full_pass(ganime, countdown_on_last_frame):
    applies, variables, last, context = ganime
    apply = applies[countdown_on_last_frame]
    remaining = jnp.array([5, 2])
    full = apply(variables, last, context, remaining)
    # Without the countdown on the last frame its cache is valid for every step.
    cache_remaining = remaining if countdown_on_last_frame else jnp.zeros_like(remaining)
    cache = apply(variables, last, cache_remaining, method=GANimeTransformer.prefix_cache)
    cached = apply(variables, None, context, remaining, prefix_kv=cache)
    np.testing.assert_allclose(cached, full, atol=1e-5)


def test_ganime_from_config():
    model = ganime_transformer_from_config(dict(
        gpt=gpt_preset("tiny"), frame_tokens=4, n_frames_before=1, max_frames=5))
    assert model.gpt.n_embd == WIDTH and model.frame_tokens == 4
    with pytest.raises(UserError, match="frames_befor"):
        ganime_transformer_from_config(dict(gpt=gpt_preset("tiny"), frames_befor=1))


def test_presets_and_config_errors():
    sizes = {name: gpt_preset(name) for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
    assert [(s["n_layer"], s["n_embd"], s["n_head"]) for s in sizes.values()] == [
        (12, 768, 12), (24, 1024, 16), (36, 1280, 20), (48, 1600, 25)]
    abstract = jax.eval_shape(
        GPT2LM(GPT2Config(**sizes["gpt2"])).init, _init_key(), jnp.zeros((1, 4), jnp.int32))
    n_params = sum(x.size for x in jax.tree.leaves(nn.unbox(abstract)))
    assert n_params == 124_439_808  # Hugging Face's `gpt2` (tied head)
    with pytest.raises(UserError, match="gpt2-medium"):
        gpt_preset("gpt3")
    with pytest.raises(UserError, match="dtype"):
        GPT2Config(**gpt_preset("tiny"), dtype="float16")
    with pytest.raises(UserError, match="remat"):
        GPT2Config(**gpt_preset("tiny"), remat="save_only_these_names")
    assert not GPT2Config(**gpt_preset("tiny"), remat="").remat
    with pytest.raises(UserError, match="n_head"):
        GPT2Config(**{**gpt_preset("tiny"), "n_head": 5})
    with pytest.raises(UserError, match="n_positions"):
        GPT2LM(GPT2Config(**gpt_preset("tiny"))).init(
            _init_key(), jnp.zeros((1, 257), jnp.int32))
    assert GPT2Config(**gpt_preset("tiny"), dtype=jnp.bfloat16).dtype == "bfloat16"


def test_sharded_init_follows_axis_rules(hf_untied, tokens):
    """Parameters are born sharded as the rules say; HF weights overlaid keep that sharding."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
    loaded, fields = load_hf_gpt2(hf_untied[0], scan_layers=True)
    model = GPT2LM(GPT2Config.from_dict(fields))

    def init(rng):
        return model.init(rng, tokens)

    from configs import gpt_kny
    rules = mesh_lib.axis_rules(gpt_kny.get_config().mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init, _init_key())
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        params = jax.jit(init, out_shardings=shardings)(_init_key())["params"]
        params = overlay_params(params, loaded)
        # "embed" (width 64) is split 4 ways over fsdp; everything else is whole.
        expected = {
            ("wte",): (VOCAB, 16),
            ("lm_head", "kernel"): (16, VOCAB),
            ("ln_f", "scale"): (16,),
            ("h", "attn", "c_attn", "kernel"): (LAYERS, 16, 3, HEADS, WIDTH // HEADS),
            ("h", "attn", "c_proj", "kernel"): (LAYERS, HEADS, WIDTH // HEADS, 16),
            ("h", "mlp", "c_fc", "kernel"): (LAYERS, 16, 4 * WIDTH),
            ("h", "mlp", "c_fc", "bias"): (LAYERS, 4 * WIDTH),
        }
        for path, shard_shape in expected.items():
            leaf = params
            for key in path:
                leaf = leaf[key]
            array = leaf.value
            assert array.sharding.shard_shape(array.shape) == shard_shape, path
            assert len(array.sharding.device_set) == 8
        data = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
        logits = jax.jit(model.apply)({"params": params}, jax.device_put(tokens, data))
    assert logits.sharding.shard_shape(logits.shape) == (1, LENGTH, VOCAB)
    np.testing.assert_allclose(np.asarray(logits), hf_untied[1], atol=1e-4, rtol=1e-4)
