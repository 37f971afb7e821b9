"""Loading checkpoints: prefixes, missing pooler, and the bad folders a user may point at."""

import json
import shutil

import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from aa_jax.errors import UserError
from aa_jax.models.loader import load_config, load_pretrained


def test_minilm_preset(minilm):
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert minilm.has_pooler
    enc = minilm.tokenizer("A man plays.", "Someone plays.")
    assert enc["token_type_ids"][-1] == 1


def test_prefix_and_missing_pooler(tmp_path):
    plain = load_pretrained(str(write_tiny_checkpoint(tmp_path / "plain")))
    prefixed = load_pretrained(str(write_tiny_checkpoint(tmp_path / "prefixed",
                                                         prefix="bert.")))
    for a, b in zip(np.asarray(plain.params["encoder"]["layer_1"]["output"]["dense"]["kernel"]),
                    np.asarray(prefixed.params["encoder"]["layer_1"]["output"]["dense"]
                               ["kernel"])):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="no pooler"):
        nopool = load_pretrained(str(write_tiny_checkpoint(tmp_path / "nopool",
                                                           pooler=False)))
    assert not nopool.has_pooler and "pooler" not in nopool.params


def test_bad_checkpoint_folders(tmp_path):
    good = write_tiny_checkpoint(tmp_path / "good")
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))

    not_bert = tmp_path / "gpt"
    shutil.copytree(good, not_bert)
    (not_bert / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="gpt2 checkpoint, not BERT"):
        load_pretrained(str(not_bert))

    no_weights = tmp_path / "noweights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights"):
        load_pretrained(str(no_weights))

    no_tok = tmp_path / "notok"
    shutil.copytree(good, no_tok)
    for name in ("tokenizer.json", "vocab.txt"):
        (no_tok / name).unlink()
    with pytest.raises(UserError, match="has no tokenizer"):
        load_pretrained(str(no_tok))

    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match="lacks"):
        load_pretrained(str(wrong))


def test_known_configs_need_no_download():
    assert load_config("bert-large").num_hidden_layers == 24
    assert load_config("bert-base-uncased").hidden_size == 768
