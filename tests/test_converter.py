"""taming/TorchGANime checkpoint conversion: round trip, numerical equality with a PyTorch
model that has taming's layer names and structure (with taming's layers, or with GANime's
TensorFlow layers), and checkpoint-file errors."""
import copy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from bench.torch_reference import GANIME_TF, TAMING, VQModel
from ganime_jax.convert.taming import (convert_taming_state_dict, load_taming_checkpoint,
                                       to_taming_state_dict)
from ganime_jax.errors import UserError
from ganime_jax.models.discriminator import NLayerDiscriminator
from ganime_jax.models.vqgan import VQGAN
from ganime_jax.tokenizer import load_tokenizer

TINY = dict(channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(8,), resolution=32, z_channels=16, embedding_dim=8,
            num_embeddings=32, norm_groups=4)
DISC = dict(filters=8, num_layers=2, norm="batch", norm_groups=4)
FRAME_SHAPE = (2, 16, 32, 3)
EPS = 1e-6
# Our fields for GANime's TF layers (the reference's `layers=GANIME_TF`).
GANIME_TF_FIELDS = dict(downsample="avgpool_conv", upsample="bilinear_conv",
                        scaled_attention=False, attention_placement="ganime_tf")


class TorchDiscriminator(nn.Module):
    def __init__(self, ndf, n_layers):
        super().__init__()
        layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x)


def _torch_vqmodel(layers):
    """bench/torch_reference.py's VQ-GAN at the TINY sizes, plus taming's discriminator."""
    model = VQModel(**TINY, norm_eps=EPS, output_tanh=True, layers=layers)
    model.loss = nn.Module()
    model.loss.discriminator = TorchDiscriminator(DISC["filters"], DISC["num_layers"])
    return model


def _torch_model(layers):
    torch.manual_seed(0)
    model = _torch_vqmodel(layers).eval()
    with torch.no_grad():  # non-trivial affine norms, codes and BatchNorm statistics
        for name, param in model.named_parameters():
            if "norm" in name or name.startswith("quantize") or "main.3" in name:
                param.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
        bn = model.loss.discriminator.main[3]
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def torch_model():
    return _torch_model(TAMING)


@pytest.fixture(scope="module")
def state_dict(torch_model):
    return {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).uniform(-1, 1, FRAME_SHAPE).astype(np.float32)


def _random_variables(module, seed):
    """Variables with the module's tree and shapes, random values (no compile needed)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(FRAME_SHAPE))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_taming_names_and_round_trip():
    params = _random_variables(VQGAN(**TINY), 0)["params"]
    disc_vars = _random_variables(NLayerDiscriminator(**DISC), 1)
    exported = to_taming_state_dict(params, disc_vars["params"], disc_vars["batch_stats"])
    assert exported["encoder.down.0.block.0.norm1.weight"].shape == (8,)
    assert exported["encoder.down.1.block.0.nin_shortcut.weight"].shape == (16, 8, 1, 1)
    assert exported["decoder.up.2.attn.1.q.weight"].shape == (16, 16, 1, 1)
    assert exported["decoder.mid.block_1.conv1.weight"].shape == (16, 16, 3, 3)
    assert exported["quantize.embedding.weight"].shape == (32, 8)
    assert exported["loss.discriminator.main.3.running_var"].shape == (16,)
    converted = convert_taming_state_dict(exported)
    for ours, back in [(params, converted.vqgan_params), (disc_vars["params"],
                                                          converted.disc_params),
                       (disc_vars["batch_stats"], converted.disc_batch_stats)]:
        assert jax.tree.structure(ours) == jax.tree.structure(back)
        jax.tree.map(np.testing.assert_array_equal, ours, back)


def test_converted_weights_reproduce_the_pytorch_model(torch_model, state_dict, frames):
    weights = convert_taming_state_dict(state_dict)
    with torch.no_grad():
        recon_t, indices_t = torch_model(torch.from_numpy(frames).permute(0, 3, 1, 2))
        logits_t = torch_model.loss.discriminator(torch.from_numpy(frames).permute(0, 3, 1, 2))
    recon, aux = jax.jit(VQGAN(**TINY).apply)({"params": weights.vqgan_params}, frames)
    np.testing.assert_array_equal(aux["indices"], indices_t.numpy())
    np.testing.assert_allclose(recon, recon_t.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    disc_vars = {"params": weights.disc_params, "batch_stats": weights.disc_batch_stats}
    logits = jax.jit(NLayerDiscriminator(**DISC).apply)(disc_vars, frames)
    np.testing.assert_allclose(logits, logits_t.permute(0, 2, 3, 1).numpy(), atol=1e-4)


def test_ganime_tf_layers_reproduce_a_pytorch_model_with_them(frames):
    """GANime's TF layers (average-pool down, bilinear up, unscaled attention, its encoder's
    attention counter) in taming's module names convert exactly; each of the three layer
    kinds, set back to taming's, visibly changes the output."""
    model = _torch_model(GANIME_TF)
    assert not any(len(level.attn) for level in model.encoder.down)  # its counter never hits 8
    assert len(model.decoder.up[2].attn) == 2
    with torch.no_grad():
        recon_t, indices_t = model(torch.from_numpy(frames).permute(0, 3, 1, 2))
    recon_t = recon_t.permute(0, 2, 3, 1).numpy()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = {"params": convert_taming_state_dict(state).vqgan_params}
    fields = GANIME_TF_FIELDS
    recon, aux = jax.jit(VQGAN(**TINY, **fields).apply)(params, frames)
    np.testing.assert_array_equal(aux["indices"], indices_t.numpy())
    np.testing.assert_allclose(recon, recon_t, atol=1e-4)
    # The encoder's kind shows in its latents (the same codes may still be chosen).
    for field, taming_kind, output in [("downsample", "strided_conv", "encoder_latents"),
                                       ("upsample", "nearest_conv", "recon"),
                                       ("scaled_attention", True, "recon")]:
        wrong = jax.jit(VQGAN(**TINY, **{**fields, field: taming_kind}).apply)(params, frames)
        right = {"recon": recon, "encoder_latents": aux["encoder_latents"]}[output]
        changed = wrong[0] if output == "recon" else wrong[1][output]
        assert np.abs(np.asarray(changed) - np.asarray(right)).max() > 10 * 1e-4, field


TORCHGANIME_EPS = 6.1e-5  # the port's Normalize(); taming's is EPS (1e-6)


@pytest.mark.parametrize("eps", [EPS, TORCHGANIME_EPS], ids=["taming", "torchganime"])
def test_each_originals_norm_epsilon_converts_exactly(eps, torch_model, state_dict):
    """Flat frames (as anime backgrounds are) leave groups of near-zero variance, where the
    epsilon decides the output: converting with another epsilon is visibly wrong."""
    model = copy.deepcopy(torch_model)
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.eps = eps
    frames = np.zeros(FRAME_SHAPE, np.float32)
    frames[:, :, :16] = np.random.default_rng(1).uniform(-1, 1, (3,)).astype(np.float32)
    frames[1, 4:12, 20:28] = 0.5
    with torch.no_grad():
        recon_t, indices_t = model(torch.from_numpy(frames).permute(0, 3, 1, 2))
    recon_t = recon_t.permute(0, 2, 3, 1).numpy()
    params = {"params": convert_taming_state_dict(state_dict).vqgan_params}
    recon, aux = jax.jit(VQGAN(**TINY, norm_eps=eps).apply)(params, frames)
    np.testing.assert_array_equal(aux["indices"], indices_t.numpy())
    np.testing.assert_allclose(recon, recon_t, atol=1e-4)
    other = TORCHGANIME_EPS if eps == EPS else EPS
    wrong, _ = jax.jit(VQGAN(**TINY, norm_eps=other).apply)(params, frames)
    assert np.abs(np.asarray(wrong) - recon_t).max() > 10 * 1e-4  # beyond the tolerance


@pytest.mark.parametrize("kind", ["safetensors", "lightning_ckpt"])
def test_load_checkpoint_files(kind, torch_model, state_dict, tmp_path):
    if kind == "safetensors":
        from safetensors.torch import save_file
        path = str(tmp_path / "vqgan.safetensors")
        save_file(dict(torch_model.state_dict()), path)
    else:
        path = str(tmp_path / "vqgan.ckpt")
        torch.save({"state_dict": torch_model.state_dict(), "epoch": 3}, path)
    loaded = load_taming_checkpoint(path, VQGAN(**TINY), NLayerDiscriminator(**DISC))
    expected = convert_taming_state_dict(state_dict)
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)
    without_disc = load_taming_checkpoint(path, VQGAN(**TINY))
    assert without_disc.disc_params is None


@pytest.mark.parametrize("change,key", [
    ({"num_embeddings": 64}, r"'quantize\.embedding\.weight' has shape \(32, 8\)"),
    ({"attention_resolutions": (16,)}, r"lacks '(encoder\.down|decoder\.up)\.1\.attn\.0\."),
    ({"attention_resolutions": ()}, r"'(encoder\.down|decoder\.up)\.2\.attn\.0\..*no place"),
])
def test_config_mismatch_names_the_key(change, key, torch_model, tmp_path):
    path = str(tmp_path / "vqgan.pt")
    torch.save(torch_model.state_dict(), path)
    with pytest.raises(UserError, match=key):
        load_taming_checkpoint(path, VQGAN(**{**TINY, **change}))


def test_group_norm_discriminator_rejects_batch_norm_checkpoint(torch_model, tmp_path):
    path = str(tmp_path / "vqgan.pt")
    torch.save(torch_model.state_dict(), path)
    with pytest.raises(UserError, match="running_mean"):
        load_taming_checkpoint(path, VQGAN(**TINY), NLayerDiscriminator(**{**DISC,
                                                                           "norm": "group"}))


class _NotATensor:
    pass


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_taming_checkpoint(str(tmp_path / "missing.ckpt"), VQGAN(**TINY))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_taming_checkpoint(str(garbage), VQGAN(**TINY))
    pickled = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "hyper_parameters": _NotATensor()}, pickled)
    with pytest.raises(UserError, match="weights_only"):  # never unpickles arbitrary objects
        load_taming_checkpoint(str(pickled), VQGAN(**TINY))
    wrong = tmp_path / "weights.npz"
    wrong.write_bytes(b"")
    with pytest.raises(UserError, match="unknown checkpoint format"):
        load_taming_checkpoint(str(wrong), VQGAN(**TINY))


TINY_CONFIG = """from configs import vqgan_kny


def get_config():
    config = vqgan_kny.get_config()
    config.data.update(height=16, width=32)
    config.model.update(channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(8,), z_channels=16, embedding_dim=8,
                        num_embeddings=32, norm_groups=4, norm_eps={eps}, output_tanh=False)
    return config
"""


def test_the_command_line_writes_a_workdir_the_tokenizer_loads(torch_model, frames, tmp_path):
    from safetensors.torch import save_file
    model = copy.deepcopy(torch_model)
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.eps = TORCHGANIME_EPS
    checkpoint = tmp_path / "vqgan.safetensors"
    save_file(dict(model.state_dict()), str(checkpoint))
    config = tmp_path / "tiny_torchganime.py"
    config.write_text(TINY_CONFIG.format(eps=TORCHGANIME_EPS))
    out = tmp_path / "converted"

    def convert(*args):
        command = [sys.executable, "-m", "ganime_jax.convert", f"--checkpoint={checkpoint}",
                   f"--config={config}", f"--out={out}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])

    done = convert("--from=torchganime")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"converted {checkpoint} (torchganime) -> {out}: decoder ")
    assert "encoder 72 tensors" in done.stdout
    assert "32 codes, frames (16, 32, 3) -> 32 tokens" in done.stdout
    tokenizer = load_tokenizer(out)
    pixels = np.round((frames + 1) * 127.5).astype(np.uint8)  # the tokenizer takes uint8
    with torch.no_grad():
        unit = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        _, indices_t = model(unit)
    np.testing.assert_array_equal(np.asarray(tokenizer.encode(pixels)).reshape(indices_t.shape),
                                  indices_t.numpy())
    for args, message in [(("--from=torchganime",), f"error: {out} already exists"),
                          (("--from=taming", "--overwrite"), "error: taming checkpoints need "
                           "model.norm_eps=1e-06, the config says 6.1e-05")]:
        failed = convert(*args)
        assert failed.returncode == 2 and failed.stderr.strip().splitlines()[-1].startswith(
            message), failed.stderr[-2000:]
