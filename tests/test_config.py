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


def test_serving_config_changes_only_serving_settings():
    from grank.config import serving_config
    cfg = make_config("tiny", "grank")  # max_history 16, ranker_history 32
    new = serving_config(cfg, {"eval.k1": "40", "model.ranker_history": "16"})
    assert (new.eval.k1, new.model.ranker_history) == (40, 16) and cfg.eval.k1 == 50
    with pytest.raises(ValueError, match="model.d_model: not a serving setting"):
        serving_config(cfg, {"model.d_model": 8})
    with pytest.raises(ValueError, match=r"model.ranker_history: must be in \[16 .*, 32 \(trained\)\], got 64"):
        serving_config(cfg, {"model.ranker_history": 64})
    with pytest.raises(ValueError, match=r"model.ranker_history: must be in \[16"):
        serving_config(cfg, {"model.ranker_history": 8})
    with pytest.raises(ValueError, match=r"eval.k2 \(20\) must be <= eval.k1 \(10\)"):
        serving_config(cfg, {"eval.k1": 10})


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


def test_ranker_score_settings_are_checked_and_ignored_without_a_ranker():
    from grank.config import effective_dict
    with pytest.raises(ValueError, match=r"model.ranker_score: must be 'residual' or 'fused', got 'sum'"):
        make_config("tiny", "grank", overrides={"model.ranker_score": "sum"})
    with pytest.raises(ValueError, match=r"model.ranker_fusion: must be > 0, got 0.0"):
        make_config("tiny", "grank", overrides={"model.ranker_fusion": 0})
    # a Ranker setting cannot invalidate the checkpoint of a variant without a Ranker
    a = make_config("tiny", "generator_only")
    for over in ({"model.ranker_score": "residual"}, {"model.ranker_popularity": False},
                 {"train.ranker_updates_table": True}):
        assert effective_dict(a) == effective_dict(make_config("tiny", "generator_only", overrides=over))
        assert effective_dict(make_config("tiny", "grank")) != effective_dict(
            make_config("tiny", "grank", overrides=over))
    # the fusion weight only matters to a fused Ranker (the default)
    residual = {"model.ranker_score": "residual"}
    assert effective_dict(make_config("tiny", "grank", overrides=residual)) == effective_dict(
        make_config("tiny", "grank", overrides={**residual, "model.ranker_fusion": 2.0}))
    assert effective_dict(make_config("tiny", "grank")) != effective_dict(
        make_config("tiny", "grank", overrides={"model.ranker_fusion": 2.0}))


def test_configs_saved_before_a_setting_existed_keep_their_behaviour():
    """A checkpoint's config without the Ranker settings added later (grank.config.LEGACY_DEFAULTS)
    loads as it was trained: residual Ranker, no popularity, L_CA updating the shared table."""
    from grank.config import LEGACY_DEFAULTS, Config
    d = make_config("default", "grank").to_dict()
    for key in LEGACY_DEFAULTS:
        section, name = key.split(".")
        d[section].pop(name)
    old = Config.from_dict(d)
    assert (old.model.ranker_score, old.model.ranker_fusion, old.model.ranker_popularity,
            old.train.ranker_updates_table, old.serve.history) == ("residual", 0.5, False, True, 128)
    new = make_config("default", "grank")
    assert (new.model.ranker_score, new.model.ranker_popularity, new.train.ranker_updates_table) == \
        ("fused", True, False)
    assert Config.from_dict(new.to_dict()) == new  # saved configs hold every key: no fill-in
