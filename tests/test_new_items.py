"""New items into a trained checkpoint (``python -m grank add-items``): trained items keep their
vectors, a new item gets the mean id embedding of the items alike plus its own feature terms,
the catalogue and popularity grow, the export passes its parity check, and bad files get clear
errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grank.checkpoint import load_checkpoint
from grank.cli import InputError
from grank.new_items import add_items

NEW = ("item_id,name,genre,year\n"
       "90001,Alike (1998),Comedy,1990-91\n"
       "90002,Unlike (1998),Action|Documentary|Western|Musical,<1930\n")


@pytest.fixture(scope="module")
def extended(tmp_path_factory, tiny_trained):
    _, _, out, _ = tiny_trained
    d = tmp_path_factory.mktemp("new_items")
    (d / "new.csv").write_text(NEW)
    summary = add_items(out / "best.pt", d / "new.csv", d / "best+new.pt")
    return out / "best.pt", d / "best+new.pt", summary


def test_new_items_get_vectors_from_items_alike_and_trained_items_are_unchanged(extended, ml100k):
    before, after, summary = extended
    m0, _, ck0 = load_checkpoint(before)
    m1, _, ck1 = load_checkpoint(after)
    n = ck0["dataset"]["n_items"]
    assert summary["added"] == 2 and ck1["dataset"]["n_items"] == n + 2
    assert ck1["catalogue"]["item_ids"][-2:] == [90001, 90002]
    assert ck1["catalogue"]["item_names"][-1] == "Unlike (1998)"
    v0, v1 = m0.item_vectors().detach(), m1.item_vectors().detach()
    torch.testing.assert_close(v1[: n + 1], v0)                # nothing trained moved
    assert torch.isfinite(v1[n + 1:]).all() and (v1[n + 1:].norm(dim=1) > 0).all()
    # "Alike": its id embedding is the mean of the trained items with exactly its features
    ids = m0.items.id.weight.detach()
    genre, year = m0.items.values0, m0.items.values1
    g = [f["values"] for f in ck0["dataset"]["item_features"]]
    comedy = torch.zeros(len(g[0]))
    comedy[g[0].index("Comedy")] = 1.0
    alike = [i for i in range(1, n + 1) if torch.equal(genre[i], comedy) and int(year[i]) == g[1].index("1990-91")]
    assert alike, "ML-100K has comedies of 1990-91"
    torch.testing.assert_close(m1.items.id.weight.detach()[n + 1], ids[alike].mean(0))
    assert summary["alike_found"] == 1                           # "Unlike" takes the mean of all
    torch.testing.assert_close(m1.items.id.weight.detach()[n + 2], ids[1:].mean(0))
    if "popularity.table" in ck1["model"]:                      # no counts for a new item
        assert (ck1["model"]["popularity.table"][:, n + 1:] == 0).all()


def test_the_extended_checkpoint_exports_with_parity(extended, ml100k, tmp_path):
    from export.build import export_checkpoint
    ex = export_checkpoint(extended[1], tmp_path, users=32, data=ml100k)
    assert not any(ex.problems.values()), ex.problems
    assert len(ex.ck["catalogue"]["item_ids"]) == ex.ck["dataset"]["n_items"]


@pytest.mark.parametrize("text, message", [
    ("item_id,genre,year\n90001,Space Opera,1990-91\n", r"genre value 'Space Opera' \(item 90001\) is not one the model was trained with"),
    ("item_id,genre\n90001,Comedy\n", "column 'year' is missing"),
    ("item_id,genre,year\n1,Comedy,1990-91\n", "already in the catalogue"),
    ("item_id,genre,year\n90001,Comedy,1990-91\n90001,Drama,1990-91\n", "appears twice"),
])
def test_bad_new_items_files_are_refused_with_the_reason(tiny_trained, tmp_path, text, message):
    _, _, out, _ = tiny_trained
    (tmp_path / "new.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        add_items(out / "best.pt", tmp_path / "new.csv", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_reach_counts_how_often_users_retrieve_the_new_items(extended):
    from grank.new_items import reach
    r = reach(extended[1], n_users=50)
    assert r["added"] == 2 and len(r["added_in_k1"]) == 2
    assert all(0 <= x <= 1 for x in r["added_in_k1"] + r["added_in_top10"])
    assert 0 < r["trained_share_ever_in_k1"] <= 1
    assert np.isfinite(r["trained_median_in_k1"])
