"""Profiles: the old web app's options as profile keys (each with its documented effect, through
the real model loaders), model folders checked at startup, warm models bounded per folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kneenode.configfile import options_table, toml_document
from kneenode.errors import ErrorCode, NodeError
from kneenode.profiles import OLD_OPTIONS, check_models, model_fingerprint, option_text
from kneenode.settings import SegmentSettings, Settings
from pipeline.segment import load_model, segment_array, unload_all
from pipeline.segment.model import _CACHE
from pipeline.shape.stage import load_shape_models
from tests.pipeline.segment.conftest import SPACING, blob_volume, cascade_plans, write_tiny_model
from workers.analysis import node_chain
from workers.stages import chain_for

ROOT = Path(__file__).resolve().parents[2]
NSM = ROOT / "models" / "nsm_demo"
NSM_FOLDERS = {"bone_cart_model": str(NSM / "femur_bone_cart"),
               "bone_only_model": str(NSM / "femur_bone"),
               "bone_cart_bscore": str(NSM / "bscore_bone_cart"),
               "bone_only_bscore": str(NSM / "bscore_bone")}
#: The documented effect of each old option: (segment configuration run, NSM fits run).
EFFECT = {
    "segmentation model nnunet_fullres": ("3d_fullres", None),
    "segmentation model nnunet_cascade": ("3d_cascade_fullres", None),
    "NSM off": (None, []),
    "NSM type bone_and_cart": (None, ["bone_and_cart"]),
    "NSM type bone_only": (None, ["bone_only"]),
    "NSM type both": (None, ["bone_and_cart", "bone_only"]),
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """One dataset folder with 3d_fullres, 3d_lowres and 3d_cascade_fullres trained models."""
    root = tmp_path_factory.mktemp("models")
    plans = cascade_plans()
    for i, config in enumerate(("3d_fullres", "3d_lowres", "3d_cascade_fullres")):
        write_tiny_model(root, configuration=config, plans=plans, name="Dataset901_TinyCascade",
                         seed=10 * i)
    return root / "Dataset901_TinyCascade"


def test_every_old_option_is_documented_and_tested():
    assert set(EFFECT) == set(OLD_OPTIONS)
    docs = (ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert options_table() in docs and options_table() in readme


@pytest.mark.parametrize("option", list(OLD_OPTIONS))
def test_old_option_maps_to_its_documented_effect(option, tiny_dataset):
    """The option's keys in a profile change exactly what the table says, in the real loaders."""
    keys = OLD_OPTIONS[option]
    base = {"segment": {"model_dir": str(tiny_dataset), "plans": "tinyPlans"},
            "nsm": NSM_FOLDERS}
    s = Settings(**base, profiles={"web": keys})
    eff = s.for_profile("web")
    configuration, fits = EFFECT[option]
    stages = [st.name for st in node_chain(s)]
    check_models(s, stages)  # every model folder the profile names is there
    assert option_text(keys) in options_table()
    if configuration is not None:
        torch.set_num_threads(1)
        assert eff.segment.configuration == configuration and s.segment.resolved_configuration == "3d_fullres"
        model = load_model(eff.segment)
        assert model.card.configuration == configuration
        assert (model.previous is not None) == (configuration == "3d_cascade_fullres")
        labels = segment_array(blob_volume(), SPACING, model)
        assert labels.shape == blob_volume().shape
        fingerprint = model_fingerprint(eff, stages)["segment"]
        assert fingerprint["configuration"] == configuration
        assert list(fingerprint["checkpoint_sha256"].values()) == list(model.card.checkpoint_sha256)
    else:
        chain = [st.name for st in chain_for(node_chain(eff), eff)]
        assert ("shape" in chain) == bool(fits)
        if fits:
            models = load_shape_models(eff.nsm)
            assert list(models.nsm) == fits
            assert all(models.bscore[v] is not None for v in fits)


def test_a_profile_naming_a_missing_model_folder_is_a_config_error(tmp_path):
    s = Settings(profiles={"research": {"segment": {"model_dir": str(tmp_path / "nope")}},
                           "shapes": {"nsm": {"enabled": True, "type": "bone_only"},
                                      "optional_stages": ["shape"]}})
    with pytest.raises(NodeError) as err:
        check_models(s, ["segment"])
    assert err.value.code is ErrorCode.CONFIG_ERROR
    assert "profile 'research'" in err.value.message and "segment.model_dir" in err.value.message
    assert "[profiles.research]" in err.value.hint
    s = Settings(profiles={"shapes": {"nsm": {"enabled": True, "type": "bone_only"},
                                      "optional_stages": ["shape"]}})
    with pytest.raises(NodeError) as err:
        check_models(s, ["segment", "shape"])
    assert "profile 'shapes'" in err.value.message and "nsm.bone_only_model" in err.value.message
    check_models(s, ["segment"])  # a chain without the shape stage needs no NSM model


def test_auto_configuration_follows_the_model_folder_name(tiny_dataset):
    """``auto`` runs what a trained-model folder was trained as; a dataset folder means 3d_fullres;
    an explicit configuration that contradicts the folder's name is refused at startup."""
    torch.set_num_threads(1)
    for config in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"):
        seg = SegmentSettings(model_dir=tiny_dataset / f"nnUNetTrainer__tinyPlans__{config}",
                              device="cpu")
        assert seg.configuration == "auto" and seg.resolved_configuration == config
        check_models(Settings(segment=seg), ["segment"])
        model = load_model(seg)
        assert model.configuration == config
        assert (model.previous is not None) == (config == "3d_cascade_fullres")
    by_name = SegmentSettings(model_dir=tiny_dataset, plans="tinyPlans")
    assert by_name.resolved_configuration == "3d_fullres"
    assert load_model(by_name).configuration == "3d_fullres"
    wrong = SegmentSettings(model_dir=tiny_dataset / "nnUNetTrainer__tinyPlans__3d_cascade_fullres",
                            configuration="3d_fullres")
    with pytest.raises(NodeError) as err:
        check_models(Settings(segment=wrong), ["segment"])
    assert "segment.configuration" in err.value.message
    assert "holds the 3d_cascade_fullres stage, not 3d_fullres" in err.value.message


def test_serve_refuses_to_start_and_starts_nothing(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "kneenode.toml"
    config.write_text(toml_document({
        "data_dir": str(data), "scp": {"port": 0}, "jobs": {"http_port": 0},
        "profiles": {"research": {"segment": {"configuration": "2d"}}},
        "routes": [{"name": "research", "called_ae": ["KNEE_RESEARCH"], "profile": "research"}],
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    done = subprocess.run([sys.executable, "-m", "kneenode.cli", "--config", str(config), "serve"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    line = " ".join(done.stderr.split())
    assert re.search(r"CONFIG_ERROR: profile 'research': segment.configuration: "
                     r"'2d' is not in .*plans.json", line), line
    assert "fix segment.configuration in [profiles.research]" in line  # markup-safe
    assert "Traceback" not in done.stderr
    assert not data.exists()  # no spool, no redis folder, no serve.json: nothing half-started


def test_warm_models_are_bounded_and_shared_per_folder(tiny_dataset):
    """Two profiles with two models alternate without reloading; a third evicts the oldest;
    predict-only settings (TTA) share the loaded model."""
    from kneenode import warm

    unload_all()
    warm.configure(2, 0)
    base = Settings(segment={"model_dir": str(tiny_dataset), "plans": "tinyPlans"},
                    profiles={"full": {}, "low": {"segment": {"configuration": "3d_lowres"}},
                              "tta": {"segment": {"tta": True}},
                              "cascade": {"segment": {"configuration": "3d_cascade_fullres"}}})
    loads = _CACHE.loads
    for _ in range(3):
        for name in ("full", "low", "tta"):
            model = load_model(base.for_profile(name).segment)
            assert model.settings.tta == (name == "tta")
    assert _CACHE.loads - loads == 2  # full and low once each; tta reuses full's weights
    load_model(base.for_profile("cascade").segment)
    warm_now = [json.loads(k)["configuration"] for k in _CACHE.loaded()]
    assert warm_now == ["3d_fullres", "3d_cascade_fullres"]  # low was least recently used
    unload_all()
    warm.configure(2, 2048)


def test_gpu_headroom_drops_old_models_before_a_load(monkeypatch):
    """GPU memory pressure cannot be produced on these CPU-only machines, so the free-memory
    reading is replaced (a mock, the only one here): below the headroom, least recently used
    models are dropped before the next load, until enough is free or none is left."""
    from kneenode import warm

    cache: warm.WarmCache[str] = warm.WarmCache("test")
    free = {"bytes": 10 * 1024**3}
    monkeypatch.setattr(warm, "cuda_free_bytes", lambda device: free["bytes"])
    monkeypatch.setitem(warm.LIMITS, "max_items", 5)
    monkeypatch.setitem(warm.LIMITS, "headroom_bytes", 4 * 1024**3)
    for key in ("a", "b", "c"):
        cache.get(key, lambda key=key: key.upper(), "cuda:0")
    assert cache.loaded() == ["a", "b", "c"]
    cache.get("a", lambda: "A", "cuda:0")  # warm: no load, now most recently used
    free["bytes"] = 1 * 1024**3  # the GPU filled up
    drops = iter([1, 5])  # one drop frees too little, the second enough
    monkeypatch.setattr(warm, "release_cuda_cache",
                        lambda: free.__setitem__("bytes", next(drops) * 1024**3))
    cache.get("d", lambda: "D", "cuda:0")
    assert cache.loaded() == ["a", "d"] and cache.loads == 4


@pytest.mark.parametrize("doc", ["docs/profiles.md", "README.md"])
def test_the_documented_three_route_example_is_a_valid_config(doc, tmp_path):
    text = (ROOT / doc).read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.DOTALL) if "[[routes]]" in b)
    (tmp_path / "k.toml").write_text(block, encoding="utf-8")
    from kneenode.settings import load_settings

    s = load_settings(tmp_path / "k.toml")
    assert len(s.routes) == 3 and len({r.profile for r in s.routes} | {"default"}) >= 3
    assert s.for_profile("research").segment.configuration == "3d_cascade_fullres"
    assert not s.for_profile("clinical").encode.sr
