"""Model repository configs: generated from the signatures, committed, parsed by Triton's own
protobuf schema, and consistent with each other (the ensemble's maps)."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import json

from export.repository import COMMITTED, build, config_drift, model_configs, served_schema
from grank.config import make_config, served_config
from grank.signatures import ENSEMBLE, ONNX_MODELS, PYTHON_MODELS, signatures

CFG = served_config(make_config("default", "grank"))  # the shape the repository serves
MODELS = ONNX_MODELS + PYTHON_MODELS + (ENSEMBLE,)
DTYPE = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "bytes": mc.TYPE_STRING}


@pytest.fixture(scope="module")
def ml1m():
    """The committed repository serves the default model of ML-1M: its data set's schema."""
    from grank.data import load, schema
    return schema(load("ml-1m"))


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_committed_configs_have_not_drifted(ml1m):
    """Fails when signatures or settings change without `python -m export configs`."""
    assert config_drift(CFG, ml1m, COMMITTED) == []
    assert sorted(p.parent.name for p in COMMITTED.glob("*/config.pbtxt")) == sorted(model_configs(CFG, ml1m))
    assert sorted(MODELS) == sorted(model_configs(CFG, ml1m))


def test_the_demo_preset_serves_with_the_committed_configs(ml1m):
    assert config_drift(served_config(make_config("fast", "grank")), ml1m, COMMITTED) == []


def test_the_ensemble_carries_the_data_sets_schema(ml1m):
    """What a client needs to build requests comes from the server: the ensemble's parameter."""
    ens = parse((COMMITTED / ENSEMBLE / "config.pbtxt").read_text())
    got = json.loads(ens.parameters["schema"].string_value)
    assert got == served_schema(ml1m)
    assert got["dataset"] == "ml-1m" and got["id_type"] == "int64" and got["padding_id"] == -1
    assert got["events"] == ["1", "2", "3", "4", "5"] and got["strong_event"] == 4
    assert [f["name"] for f in got["user_features"]] == ["gender", "age", "occupation", "zip_digit"]
    assert got["user_features"][0]["values"] == ["F", "M"]
    assert [(f["name"], f["multi"], f["size"]) for f in got["item_features"]] == [("genre", True, 18), ("year", False, 12)]


def test_the_committed_repository_serves_the_measured_shape():
    """ServeConfig: 200 candidates over the trained 256-item history (grank.config.ServeConfig:
    measured choices), not the trained 500 over 256; the committed configs say so."""
    trained = make_config("default", "grank")
    assert (trained.eval.k1, trained.model.ranker_history) == (500, 256)
    assert (CFG.eval.k1, CFG.model.ranker_history) == (200, 256)
    ranker = parse((COMMITTED / "grank_ranker" / "config.pbtxt").read_text())
    assert {t.name: list(t.dims) for t in ranker.input}["candidate_ids"] == [200]
    assert {t.name: list(t.dims) for t in ranker.input}["history_ids"] == [256]


@pytest.mark.parametrize("name", MODELS)
def test_configs_parse_and_match_signatures(name, ml1m):
    c = parse((COMMITTED / name / "config.pbtxt").read_text())
    sig = signatures(CFG, ml1m)[name]
    assert c.name == name and c.max_batch_size > 0
    for got, want in ((c.input, sig.inputs), (c.output, sig.outputs)):
        assert [(t.name, t.data_type, list(t.dims)) for t in got] == \
               [(t.name, DTYPE[t.dtype], list(t.dims)) for t in want]
    if name in ONNX_MODELS:
        assert c.backend == "onnxruntime" and c.HasField("dynamic_batching")
    elif name in PYTHON_MODELS:
        assert c.backend == "python" and c.HasField("dynamic_batching")
    else:
        assert c.platform == "ensemble"


def test_ensemble_wiring(ml1m):
    """Every step input is an ensemble input or an earlier step's output, every step maps
    exactly its model's inputs, and the ensemble outputs are produced."""
    sigs = signatures(CFG, ml1m)
    ens = parse((COMMITTED / ENSEMBLE / "config.pbtxt").read_text())
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["grank_validate", "grank_user_encoder", "grank_mips",
                                             "grank_ranker", "grank_catalogue"]
    available = {t.name for t in ens.input}
    for s in steps:
        assert set(s.input_map) == {t.name for t in sigs[s.model_name].inputs}
        assert set(s.input_map.values()) <= available, s.model_name
        assert set(s.output_map) <= {t.name for t in sigs[s.model_name].outputs}
        available |= set(s.output_map.values())
    assert {t.name for t in ens.output} <= available
    # the ONNX models only ever see tensors that passed the validator
    for s in steps[1:]:
        assert not set(s.input_map.values()) & {t.name for t in ens.input}


def test_build_refuses_to_change_committed_configs(tmp_path, ml1m):
    """A checkpoint with other shapes, or of another data set, must not silently rewrite a
    repository's configs."""
    tiny = make_config("tiny", "grank")
    build_dir = tmp_path / "repo"
    from export.repository import write_configs
    write_configs(CFG, ml1m, build_dir)
    with pytest.raises(ValueError, match="would change"):
        build(tiny, ml1m, {}, {}, {}, build_dir)
    shop = {**ml1m, "name": "shop", "id_type": "string", "user_features": []}
    with pytest.raises(ValueError, match="another data set"):
        build(CFG, shop, {}, {}, {}, build_dir)
    assert config_drift(CFG, ml1m, build_dir) == []
