"""Config checking, mesh construction and optimiser schedules."""
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from configs import vqgan_kny
from ganime_jax import config_check, mesh as mesh_lib
from ganime_jax.errors import UserError
from ganime_jax.train import optimizers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.py")
                                        if p.stem != "__init__"))
def test_every_shipped_config_has_exactly_its_stages_reference_fields(name):
    """Each config in configs/ carries every field of its stage's reference config and no
    other (a field added to one config only, or dropped from it, fails here)."""
    import importlib

    from configs import gpt_kny, refiner_demo

    config = importlib.import_module(f"configs.{name}").get_config()
    reference = {"vqgan": vqgan_kny, "gpt": gpt_kny,
                 "refiner": refiner_demo}[config.stage].get_config()
    assert set(config_check.flatten(config)) == set(config_check.flatten(reference))


def test_missing_field_is_named():
    config = vqgan_kny.get_config()
    del config.train["num_steps"]
    with pytest.raises(UserError, match="missing the required field `train.num_steps`"):
        config_check.check_fields(config, vqgan_kny.get_config(), "ref")


def test_unknown_field_suggests_the_close_one():
    config = vqgan_kny.get_config()
    config.train.num_step = 3
    with pytest.raises(UserError, match="did you mean `train.num_steps`"):
        config_check.check_fields(config, vqgan_kny.get_config(), "ref")


def test_unset_required_field_is_named():
    config = vqgan_kny.get_config()
    config.data.dataset = None
    with pytest.raises(UserError, match="`data.dataset` is required"):
        config_check.check_fields(config, vqgan_kny.get_config(), "ref")


def test_mesh_takes_remaining_devices():
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 2}))
    assert dict(mesh.shape) == {"data": len(jax.devices()) // 2, "fsdp": 2}


@pytest.mark.parametrize("data,fsdp", [(3, 1), (-1, -1), (2, 2)])
def test_bad_mesh_is_a_user_error(data, fsdp):
    with pytest.raises(UserError, match="config.mesh"):
        mesh_lib.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}),
                           devices=jax.devices()[:8])


def test_warmup_then_cosine_schedule():
    schedule = optimizers.learning_rate_schedule(
        1e-3, schedule="cosine", warmup_steps=10, total_steps=110, init_value=1e-5)
    assert np.isclose(schedule(0), 1e-5)
    assert np.isclose(schedule(10), 1e-3)
    assert np.isclose(schedule(60), 5e-4, rtol=1e-3)
    assert schedule(110) < 1e-8
    with pytest.raises(UserError, match="unknown learning-rate schedule"):
        optimizers.learning_rate_schedule(1e-3, schedule="linear", warmup_steps=0, total_steps=5)


@pytest.mark.parametrize("name,grid", [("vqgan_kny", (8, 16)), ("vqgan_demo", (8, 16)),
                                       ("vqgan_tiny", (4, 8)), ("vqgan_moving_mnist", (8, 8)),
                                       ("vqgan_torchganime", (8, 16)),
                                       ("vqgan_ganime_tf", (8, 16)),
                                       ("vqgan_ganime_tf_moving_mnist", (8, 8)),
                                       ("vqgan_taming_f16", (4, 8))])
def test_stage1_configs_pass_the_check_and_give_their_token_grid(name, grid):
    import importlib

    from ganime_jax.models.vqgan import VQGAN

    config = importlib.import_module(f"configs.{name}").get_config()
    config_check.check_fields(config, vqgan_kny.get_config(), "configs/vqgan_kny.py")
    frames = jax.ShapeDtypeStruct((1, config.data.height, config.data.width, 3), np.float32)
    model = VQGAN(**config.model)
    indices = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, method=model.encode)[0][0],
        frames)
    assert indices.shape == (1, *grid)


def test_the_torchganime_preset_keeps_its_own_resolution():
    from configs import vqgan_torchganime
    config = vqgan_torchganime.get_config()
    assert (config.model.resolution, config.data.width, config.model.norm_eps) == (256, 128, 6.1e-5)
    config.data.width = 64  # the frame width no longer drives the attention counter
    assert config.model.resolution == 256


def _attention_layout(name: str) -> tuple[dict, dict, bool]:
    """Per encoder/decoder level of a preset, its AttnBlock names; and whether both middle
    blocks have one. From the parameter shapes (no compile)."""
    import importlib

    from ganime_jax.models.vqgan import VQGAN

    config = importlib.import_module(f"configs.{name}").get_config()
    frames = jax.ShapeDtypeStruct((1, config.data.height, config.data.width, 3), np.float32)
    params = jax.eval_shape(VQGAN(**config.model).init, jax.random.key(0), frames)["params"]

    def levels(part: str) -> dict:
        return {level: sorted(k for k in blocks if k.startswith("attn"))
                for level, blocks in params[part].items() if level.startswith(("down", "up"))}

    mid = all("attn_1" in params[part]["mid"] for part in ("encoder", "decoder"))
    return levels("encoder"), levels("decoder"), mid


@pytest.mark.parametrize("name,encoder,decoder", [
    # GANime's TF code: no attention inside the encoder's levels, two in the decoder's lowest.
    ("vqgan_ganime_tf", {}, {"up_3": ["attn_0", "attn_1"]}),
    ("vqgan_ganime_tf_moving_mnist", {}, {"up_3": ["attn_0", "attn_1"]}),
    # TorchGANime's resolution 256: the middle only.
    ("vqgan_torchganime", {}, {}),
    # taming at 16 of 256 over five levels: the lowest, per block.
    ("vqgan_taming_f16", {"down_4": ["attn_0", "attn_1"]},
     {"up_4": ["attn_0", "attn_1", "attn_2"]}),
    # ours at 16 of the frame width 128.
    ("vqgan_kny", {"down_3": ["attn_0"]}, {"up_3": ["attn_0", "attn_1"]}),
])
def test_each_preset_places_attention_where_its_original_does(name, encoder, decoder):
    enc, dec, mid = _attention_layout(name)
    assert {level: names for level, names in enc.items() if names} == encoder
    assert {level: names for level, names in dec.items() if names} == decoder
    assert mid


def test_the_ganime_tf_presets_use_its_layers():
    from configs import vqgan_ganime_tf, vqgan_ganime_tf_moving_mnist
    for config in (vqgan_ganime_tf.get_config(), vqgan_ganime_tf_moving_mnist.get_config()):
        model = config.model
        assert (model.downsample, model.upsample, model.scaled_attention, model.norm_eps,
                model.output_tanh, model.resolution) == ("avgpool_conv", "bilinear_conv", False,
                                                         1e-6, True, 128)
    mnist = vqgan_ganime_tf_moving_mnist.get_config()
    assert (mnist.model.channels, tuple(mnist.model.channel_multipliers), mnist.model.z_channels,
            mnist.model.num_embeddings, mnist.data.width) == (128, (1, 1, 2, 2), 128, 128, 64)
    assert vqgan_ganime_tf.get_config().model.num_embeddings == 50257


def test_the_reference_gpt_has_gpt2_mediums_sizes():
    """Configs import no library code, so gpt_kny writes gpt2-medium's sizes out itself."""
    from configs import gpt_kny
    from ganime_jax.models.gpt import gpt_preset
    gpt = gpt_kny.get_config().model.gpt
    assert {k: gpt[k] for k in gpt_preset("gpt2-medium")} == {**gpt_preset("gpt2-medium"),
                                                               "vocab_size": 1024}


def test_axis_rules_come_from_the_config_and_drive_stage1_sharding():
    import json

    from configs import gpt_kny
    from ganime_jax.train import vqgan_task
    rules = mesh_lib.axis_rules(vqgan_kny.get_config().mesh)
    assert rules == (("features", "fsdp"),)
    saved = ml_collections.ConfigDict(json.loads(json.dumps(gpt_kny.get_config().mesh.to_dict())))
    assert mesh_lib.axis_rules(saved)[0] == ("batch", ("data", "fsdp"))  # lists read back
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}),
                              devices=jax.devices()[:8])
    tree = {"kernel": jax.ShapeDtypeStruct((3, 3, 4, 8), np.float32),
            "bias": jax.ShapeDtypeStruct((8,), np.float32)}
    split = vqgan_task.state_shardings(tree, mesh, rules)
    assert split["kernel"].spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert split["bias"].spec == jax.sharding.PartitionSpec()
    whole = vqgan_task.state_shardings(tree, mesh, (("features", None),))
    assert whole["kernel"].spec in (jax.sharding.PartitionSpec(),
                                    jax.sharding.PartitionSpec(None, None, None, None))
    with pytest.raises(UserError, match="mesh axis 'model'"):
        mesh_lib.axis_rules(ml_collections.ConfigDict({"axis_rules": (("embed", "model"),)}))


def test_checkpoints_from_before_a_field_existed_still_match():
    """A stage-2 checkpoint saved before `relative_position_bias`, `grid_width` and
    `token_order` existed matches today's config with the bias off and GANime's parallel
    order, whatever the grid width; turning the bias on or raster order is an architecture
    change, and so is another grid width once the bias is on."""
    from configs import gpt_mnist_demo
    from ganime_jax import checkpointing

    current = gpt_mnist_demo.get_config().to_dict()
    assert current["model"]["token_order"] == "raster"
    current["model"].update(relative_position_bias=False, token_order="parallel")
    saved = {**current, "model": {k: v for k, v in current["model"].items()
                                  if k not in ("relative_position_bias", "grid_width",
                                               "token_order")}}
    checkpointing.check_same_architecture(saved, current, "old")
    biased = {**current, "model": {**current["model"], "relative_position_bias": True}}
    with pytest.raises(UserError, match="model.relative_position_bias=False"):
        checkpointing.check_same_architecture(saved, biased, "old")
    wider = {**biased, "model": {**biased["model"], "grid_width": 16}}
    checkpointing.check_same_architecture(biased, biased, "new")
    with pytest.raises(UserError, match="model.grid_width=8"):
        checkpointing.check_same_architecture(biased, wider, "new")
    raster = {**current, "model": {**current["model"], "token_order": "raster"}}
    with pytest.raises(UserError, match="model.token_order='parallel' but the config says "
                                        "'raster'"):
        checkpointing.check_same_architecture(saved, raster, "old")
