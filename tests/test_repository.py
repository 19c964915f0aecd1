"""Model repository configs: generated from the signatures, committed, parsed by Triton's own
protobuf schema, and consistent with each other (the ensemble's maps)."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.repository import COMMITTED, build, config_drift, model_configs
from grank.config import make_config, served_config
from grank.signatures import ENSEMBLE, ONNX_MODELS, VALIDATE, signatures

CFG = served_config(make_config("default", "grank"))  # the shape the repository serves
DTYPE = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_committed_configs_have_not_drifted():
    """Fails when signatures or settings change without `python -m export configs`."""
    assert config_drift(CFG, COMMITTED) == []
    assert sorted(p.parent.name for p in COMMITTED.glob("*/config.pbtxt")) == sorted(model_configs(CFG))


def test_the_demo_preset_serves_with_the_committed_configs():
    assert config_drift(served_config(make_config("fast", "grank")), COMMITTED) == []


def test_the_committed_repository_serves_the_measured_shape():
    """ServeConfig: 200 candidates over the trained 256-item history (grank.config.ServeConfig:
    measured choices), not the trained 500 over 256; the committed configs say so."""
    trained = make_config("default", "grank")
    assert (trained.eval.k1, trained.model.ranker_history) == (500, 256)
    assert (CFG.eval.k1, CFG.model.ranker_history) == (200, 256)
    ranker = parse((COMMITTED / "grank_ranker" / "config.pbtxt").read_text())
    assert {t.name: list(t.dims) for t in ranker.input}["candidate_ids"] == [200]
    assert {t.name: list(t.dims) for t in ranker.input}["history_ids"] == [256]


@pytest.mark.parametrize("name", list(model_configs(CFG)))
def test_configs_parse_and_match_signatures(name):
    c = parse((COMMITTED / name / "config.pbtxt").read_text())
    sig = signatures(CFG)[name]
    assert c.name == name and c.max_batch_size > 0
    for got, want in ((c.input, sig.inputs), (c.output, sig.outputs)):
        assert [(t.name, t.data_type, list(t.dims)) for t in got] == \
               [(t.name, DTYPE[t.dtype], list(t.dims)) for t in want]
    if name in ONNX_MODELS:
        assert c.backend == "onnxruntime" and c.HasField("dynamic_batching")
    elif name == VALIDATE:
        assert c.backend == "python" and c.HasField("dynamic_batching")
    else:
        assert c.platform == "ensemble"


def test_ensemble_wiring():
    """Every step input is an ensemble input or an earlier step's output, every step maps
    exactly its model's inputs, and the ensemble outputs are produced."""
    sigs = signatures(CFG)
    ens = parse((COMMITTED / ENSEMBLE / "config.pbtxt").read_text())
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["grank_validate", "grank_user_encoder", "grank_mips", "grank_ranker"]
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


def test_build_refuses_to_change_committed_configs(tmp_path):
    """A checkpoint with other shapes must not silently rewrite a repository's configs."""
    tiny = make_config("tiny", "grank")
    build_dir = tmp_path / "repo"
    from export.repository import write_configs
    write_configs(CFG, build_dir)
    with pytest.raises(ValueError, match="would change"):
        build(tiny, {}, {}, build_dir)
    assert config_drift(CFG, build_dir) == []
