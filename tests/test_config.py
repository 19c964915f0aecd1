import pytest

from grank.config import PRESETS, VARIANTS, Config, apply_overrides, make_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_preset_and_variant_builds(preset, variant):
    cfg = make_config(preset, variant)
    for k, v in VARIANTS[variant].items():
        assert getattr(cfg.model, k) == v
    assert Config.from_dict(cfg.to_dict()) == cfg  # what checkpoints store round-trips


def test_overrides_are_typed():
    cfg = make_config("tiny", overrides={"model.d_model": "32", "train.lr": "0.01",
                                         "eval.ks": "1,2,3", "model.ranker": "false"})
    assert cfg.model.d_model == 32 and cfg.train.lr == 0.01
    assert cfg.eval.ks == (1, 2, 3) and cfg.model.ranker is False


@pytest.mark.parametrize("key,value,msg", [
    ("model.d_modle", 3, "unknown config key 'model.d_modle'"),
    ("nope.x", 1, "unknown config section"),
    ("model.d_model", "wide", "model.d_model: expected int"),
    ("model.ranker", "maybe", "expected a boolean"),
    ("model.d_model", 31, "divisible by model.n_heads"),
    ("eval.k2", 10_000, "eval.k2"),
])
def test_bad_overrides_name_the_field(key, value, msg):
    with pytest.raises(ValueError, match=msg):
        make_config("default", overrides={key: value})


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="preset: must be one of"):
        make_config("huge")
    with pytest.raises(ValueError, match="variant: must be one of"):
        make_config("tiny", "bert4rec")


def test_unknown_checkpoint_keys_rejected():
    d = make_config("tiny").to_dict()
    d["model"]["extra"] = 1
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        Config.from_dict(d)


def test_overrides_do_not_mutate_input():
    base = make_config("tiny")
    apply_overrides(base, {"model.d_model": 8})
    assert base.model.d_model == 16


def test_effective_config_ignores_settings_of_absent_parts():
    from grank.config import effective_dict
    a = make_config("tiny", "generator_only")
    b = make_config("tiny", "generator_only", overrides={"train.loss_weights": "1,5,5",
                                                          "train.aux_negatives": 3, "train.ranker_hard": 2})
    assert effective_dict(a) == effective_dict(b)
    c = make_config("tiny", "grank")
    d = make_config("tiny", "grank", overrides={"train.loss_weights": "1,5,5"})
    assert effective_dict(c) != effective_dict(d)
    e = make_config("tiny", "generator_only", overrides={"train.lr": 0.5})
    assert effective_dict(a) != effective_dict(e)


def test_with_serving_changes_only_serving_settings():
    from grank.config import with_serving
    cfg = make_config("tiny", "grank")  # max_history 16, ranker_history 32
    new = with_serving(cfg, {"eval.k1": "40", "model.ranker_history": "16"})
    assert (new.eval.k1, new.model.ranker_history) == (40, 16) and cfg.eval.k1 == 50
    with pytest.raises(ValueError, match="model.d_model: not a serving setting"):
        with_serving(cfg, {"model.d_model": 8})
    with pytest.raises(ValueError, match=r"model.ranker_history: must be in \[16 .*, 32 \(trained\)\], got 64"):
        with_serving(cfg, {"model.ranker_history": 64})
    with pytest.raises(ValueError, match=r"model.ranker_history: must be in \[16"):
        with_serving(cfg, {"model.ranker_history": 8})
    with pytest.raises(ValueError, match=r"eval.k2 \(20\) must be <= eval.k1 \(10\)"):
        with_serving(cfg, {"eval.k1": 10})


def test_served_config_applies_the_serve_section_and_overrides_on_top():
    from grank.config import served_config
    cfg = make_config("default")
    assert (served_config(cfg).eval.k1, served_config(cfg).model.ranker_history) == (200, 256)
    assert served_config(cfg, {"serve.k1": "300"}).eval.k1 == 300  # a serve.* override is honoured
    assert served_config(cfg, {"serve.history": 128}).model.ranker_history == 128
    assert served_config(cfg, {"serve.history": 0}).model.ranker_history == 256  # 0 = the trained one
    assert served_config(cfg, {"eval.k1": 1000}).eval.k1 == 1000
    with pytest.raises(ValueError, match=r"model.ranker_history: must be in \[64"):
        served_config(cfg, {"serve.history": 32})


def test_ranker_settings_are_checked_and_ignored_without_a_ranker():
    from grank.config import effective_dict
    with pytest.raises(ValueError, match=r"model.ranker_fusion: must be > 0, got 0.0"):
        make_config("tiny", "grank", overrides={"model.ranker_fusion": 0})
    # a Ranker setting cannot invalidate the checkpoint of a variant without a Ranker
    a = make_config("tiny", "generator_only")
    for over in ({"model.ranker_popularity": False}, {"model.ranker_fusion": 2.0}, {"train.ranker_hard": 4}):
        assert effective_dict(a) == effective_dict(make_config("tiny", "generator_only", overrides=over))
        assert effective_dict(make_config("tiny", "grank")) != effective_dict(
            make_config("tiny", "grank", overrides=over))
    # the blend fit is a step after training: it never invalidates a trained checkpoint
    assert effective_dict(make_config("tiny", "grank")) == effective_dict(
        make_config("tiny", "grank", overrides={"train.fit_blend": False}))


@pytest.mark.parametrize("key", ["model.ranker_score", "train.ranker_holdout", "train.ranker_detach",
                                 "train.ranker_slots", "train.ntp_mask_seen", "train.ranker_updates_table"])
def test_removed_recipes_are_unknown_keys(key):
    """Options that experiments refuted are gone (docs/EXPERIMENTS.md names the tag that keeps
    them): setting one is an error naming it, not a silent no-op."""
    with pytest.raises(ValueError, match=f"unknown config key '{key}'"):
        make_config("tiny", "grank", overrides={key: "true"})


def test_a_saved_config_must_hold_every_key():
    """A missing key is an error, never today's default: a later default must not change how a
    saved model is rebuilt (checkpoints of another format are refused before this, by version)."""
    from grank.config import Config
    d = make_config("default", "grank").to_dict()
    d["model"].pop("ranker_fusion")
    with pytest.raises(ValueError, match=r"ModelConfig keys missing: \['ranker_fusion'\]"):
        Config.from_dict(d)
    new = make_config("default", "grank")
    assert Config.from_dict(new.to_dict()) == new
