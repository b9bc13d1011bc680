"""Decoder layout and model-folder loading: a public-format checkpoint loads strictly, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kneenode.errors import ErrorCode, NodeError
from pipeline.shape.decoder import (
    DecoderConfig,
    build_decoder,
    count_parameters,
    public_state_dict,
    sample_features_per_plane,
)
from pipeline.shape.model import load_bscore, load_model

# The keys of the ShapeMedKnee training config that decide the architecture (public values).
SHAPEMEDKNEE_CONFIG = {
    "latent_size": 512, "objects_per_decoder": 2, "conv_hidden_dims": [512] * 5,
    "conv_deep_image_size": 2, "conv_norm": True, "conv_norm_type": "layer",
    "conv_start_with_mlp": True, "sdf_latent_size": 128, "sdf_hidden_dims": [512, 512, 512],
    "weight_norm": True, "final_activation": "tanh", "activation": "relu", "dropout_prob": 0,
    "sum_conv_output_features": True, "conv_pred_sdf": False, "model_type": "triplanar",
    "EXP_NAME": "231_nsm_femur_cartilage_v0.0.1", "lr_recon": 0.005, "clamp_dist_recon": 0.1,
}


def _folder(tmp: Path, config: dict, state: dict, epoch: int = 2000, name: str = "model_params_config.json") -> Path:
    (tmp / "model").mkdir(parents=True)
    (tmp / name).write_text(json.dumps(config))
    torch.save({"epoch": epoch, "model": state, "optimizer": {"state": {}, "param_groups": []}},
               tmp / "model" / f"{epoch}.pth")
    return tmp


def test_full_size_public_state_dict_loads_strictly(tmp_path):
    torch.manual_seed(0)
    src = build_decoder(SHAPEMEDKNEE_CONFIG)
    assert count_parameters(src) == pytest.approx(20.8e6, rel=0.01)
    state = public_state_dict(src, with_aliases=True)  # weights stored twice, as released
    # the public names, spot-checked (an extra activation module would renumber these)
    for key, shape in {
        "vae_decoder.fc.weight": (2048, 512),
        "vae_decoder.decoder.0.weight": (512, 512, 3, 3),
        "vae_decoder.decoder.1.weight": (512, 4, 4),
        "vae_decoder.decoder.9.weight": (512, 64, 64),
        "vae_decoder.decoder.10.0.weight": (384, 512, 3, 3),
        "vae_decoder.layers.10.0.bias": (384,),
        "sdf_decoder.layers.0.weight_v": (512, 131),
        "sdf_decoder.layers.0.weight_g": (512, 1),
        "sdf_decoder.layers.3.weight_v": (2, 512),
    }.items():
        assert tuple(state[key].shape) == shape, key
    folder = _folder(tmp_path / "m", SHAPEMEDKNEE_CONFIG, state)
    model = load_model(folder)
    assert model.epoch == 2000 and model.latent_size == 512 and model.n_objects == 2
    z = torch.randn(512) * 0.1
    xyz = torch.rand(500, 3) * 2.4 - 1.2
    with torch.no_grad():
        assert torch.equal(model.decoder(z, xyz), src(z, xyz))
    assert model.decoder.planes(z).shape == (1, 384, 64, 64)


def test_small_model_loads_with_model_config_name_and_new_weight_norm_names(tmp_path):
    cfg = DecoderConfig(latent_size=8, n_objects=1, conv_hidden_dims=(8, 8), sdf_latent_size=4,
                        sdf_hidden_dims=(16,))
    src = build_decoder(cfg)
    state = public_state_dict(src, with_aliases=False)
    for i in range(2):  # torch's parametrize API names
        state[f"sdf_decoder.layers.{i}.parametrizations.weight.original0"] = state.pop(f"sdf_decoder.layers.{i}.weight_g")
        state[f"sdf_decoder.layers.{i}.parametrizations.weight.original1"] = state.pop(f"sdf_decoder.layers.{i}.weight_v")
    conf = {"latent_size": 8, "objects_per_decoder": 1, "conv_hidden_dims": [8, 8],
            "sdf_latent_size": 4, "sdf_hidden_dims": [16]}
    model = load_model(_folder(tmp_path / "m", conf, state, epoch=5, name="model_config.json"))
    z, xyz = torch.randn(8), torch.rand(50, 3)
    with torch.no_grad():
        assert torch.equal(model.decoder(z, xyz), src(z, xyz))


def test_mismatched_checkpoint_is_a_config_error(tmp_path):
    cfg = DecoderConfig(latent_size=8, conv_hidden_dims=(8, 8), sdf_latent_size=4, sdf_hidden_dims=(16,))
    state = public_state_dict(build_decoder(cfg))
    state.pop("sdf_decoder.layers.1.bias")
    conf = {"latent_size": 8, "objects_per_decoder": 2, "conv_hidden_dims": [8, 8],
            "sdf_latent_size": 4, "sdf_hidden_dims": [16]}
    with pytest.raises(NodeError) as err:
        load_model(_folder(tmp_path / "a", conf, state))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "sdf_decoder.layers.1.bias" in str(err.value)
    state = public_state_dict(build_decoder(cfg))
    state["vae_decoder.layers.0.weight"] = state["vae_decoder.layers.0.weight"] + 1.0
    with pytest.raises(NodeError, match="alias"):
        load_model(_folder(tmp_path / "b", conf, state))
    with pytest.raises(NodeError, match="conv_activation"):
        load_model(_folder(tmp_path / "c", {**conf, "conv_activation": "relu"}, state))


def test_vectorised_plane_sampling_equals_per_plane_sampling():
    torch.manual_seed(1)
    dec = build_decoder(DecoderConfig(latent_size=16, conv_hidden_dims=(8, 8, 8), sdf_latent_size=6,
                                      sdf_hidden_dims=(16,)))
    planes = dec.planes(torch.randn(16))
    xyz = torch.rand(300, 3) * 2.6 - 1.3  # some outside [-1.1, 1.1]: clamped
    a = dec.sample_features(planes, xyz[None])[0]
    b = sample_features_per_plane(dec, planes, xyz)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bscore_folder(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(
        {"bscore_vector": [3.0, 4.0], "mean_healthy": -1.0, "std_healthy": 0.5}))
    b = load_bscore(tmp_path)
    assert b.vector.tolist() == [0.6, 0.8]
    assert b.score([1.0, 1.0]) == pytest.approx((1.4 + 1.0) / 0.5)
    (tmp_path / "model.json").write_text(json.dumps(
        {"bscore_vector": [1.0, 0.0], "mean_healthy": 0.0, "std_healthy": float("nan")}))
    with pytest.raises(NodeError):
        load_bscore(tmp_path)
