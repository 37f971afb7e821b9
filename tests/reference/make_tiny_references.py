"""Writes two tiny random-weight Hugging Face checkpoints (RoBERTa, MPNet) and their outputs.

The default test run loads these folders with aa_jax's checkpoint loaders (weights and
tokenizers) and compares the Flax encoders with the outputs of Hugging Face's PyTorch
models saved here, so that the checks need neither torch nor a download. torch and
transformers are not part of aa_jax's dependencies, so the script runs in a virtualenv of
its own:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 "transformers==4.57.*" numpy safetensors \\
        tokenizers
    /tmp/refvenv/bin/python tests/reference/make_tiny_references.py

(any CPU build of torch works; the committed files were made with torch 2.13.0+cpu,
transformers 4.57.6, tokenizers 0.22.2, safetensors 0.8.0 and numpy 2.4.6; other torch
versions may draw other random weights, so re-creating the folders means re-creating the
.npz files with them, which this script does).

Written, under tests/reference/:

* ``tiny-roberta/``: ``RobertaModel`` (with its pooler) of ``RobertaConfig(hidden_size=64,
  num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
  max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
  eos_token_id=2, initializer_range=0.1, layer_norm_eps=1e-5)``, random weights drawn
  after ``torch.manual_seed(0)``, saved with ``save_pretrained`` (config.json,
  model.safetensors); its tokenizer is a byte-level BPE trained with the ``tokenizers``
  library on CORPUS below (special tokens ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2,
  ``<unk>`` = 3, ``<mask>`` = 4), saved as a ``RobertaTokenizerFast`` (pairs come out as
  ``<s> A </s></s> B </s>``).
* ``tiny-mpnet/``: ``MPNetModel`` of ``MPNetConfig(hidden_size=64, num_hidden_layers=3,
  num_attention_heads=4, intermediate_size=128, max_position_embeddings=130,
  relative_attention_num_buckets=32, pad_token_id=1, initializer_range=0.1,
  layer_norm_eps=1e-5)``, seeded and saved the same way; its tokenizer is an
  ``MPNetTokenizerFast`` (lower-casing WordPiece) on a vocab.txt laid out as the real
  all-mpnet-base-v2's: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, then the
  BERT-style ``[PAD]``, ``[unused0]``, ``[unused1]``, ``[UNK]`` (the unknown token, as in
  the real vocab), ``[CLS]``, ``[SEP]``, ``[MASK]``, then single characters, the
  lower-cased words of CORPUS and ``##`` + each letter and digit (so that any word
  tokenizes), and ``<mask>`` last; its tokenizer.json has the real one's pipeline
  (BertNormalizer with lower-casing, BertPreTokenizer, WordPiece, RobertaProcessing) and
  special added tokens.
* ``tiny_roberta_reference.npz``, ``tiny_mpnet_reference.npz``: the sentence pairs of
  make_bert_reference.py tokenized as pairs by the folder's tokenizer (right-padded,
  ``padding=True``): ``input_ids`` and ``attention_mask`` (int64; no token types), with
  the model's ``last_hidden_state`` and ``pooler_output`` in float32, eval mode.

The script then reloads each folder with ``AutoTokenizer`` and ``AutoModel`` and checks
that the tokens and outputs come out the same.
"""

import string
import tempfile
from pathlib import Path

import numpy as np
from make_bert_reference import PAIRS  # the same sentence pairs as the BERT reference

HERE = Path(__file__).parent
ROBERTA_DIR = HERE / "tiny-roberta"
MPNET_DIR = HERE / "tiny-mpnet"
ROBERTA_OUT = HERE / "tiny_roberta_reference.npz"
MPNET_OUT = HERE / "tiny_mpnet_reference.npz"
SEED = 0
MAX_LENGTH = 128  # max_position_embeddings 130 minus the padding offset of 2
BPE_VOCAB_SIZE = 512
SIZE_LIMIT = 1 << 20  # bytes per folder

COMMON = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=130, pad_token_id=1,
              initializer_range=0.1, layer_norm_eps=1e-5)

# A small GLUE-like English corpus; the PAIRS sentences are added to it.
CORPUS = [
    "A woman is slicing an onion in the kitchen.",
    "A man is cutting up a cucumber.",
    "Three children are playing soccer on a grassy field.",
    "The children play football outside.",
    "Two dogs are fighting over a stick near the river.",
    "A girl is riding a horse along the beach at sunset.",
    "The stock market fell sharply on Tuesday after the bank raised interest rates.",
    "Shares dropped by three percent in early trading.",
    "The company said its profits rose 12 percent in the second quarter.",
    "Revenue for the year was lower than analysts had expected.",
    "The movie was a complete waste of time.",
    "I loved every minute of this charming and funny film.",
    "The acting is wooden and the plot makes no sense.",
    "It is one of the best books I have read this year.",
    "The service at the restaurant was slow, but the food was excellent.",
    "She did not think the answer was correct.",
    "He bought a new car last week and drove it to the coast.",
    "The train to London leaves at half past nine.",
    "Scientists have found water ice on the surface of the moon.",
    "The president will meet foreign leaders in Paris next month.",
    "Police arrested two men in connection with the robbery.",
    "Heavy rain caused flooding in several towns overnight.",
    "The museum is closed on Mondays and public holidays.",
    "Where can I buy tickets for the concert?",
    "How many people live in this city?",
    "What is the capital of Australia?",
    "Canberra is the capital of Australia.",
    "The committee approved the new budget by a vote of seven to two.",
    "Most students passed the exam, although a few failed.",
    "The old bridge was replaced because it was no longer safe.",
    "My brother works as a nurse at the local hospital.",
    "They were late because the bus broke down.",
    "If it rains tomorrow, the match will be cancelled.",
    "The painting was sold for more than a million dollars.",
    "A small boat is sailing across the lake.",
    "An elderly man is sitting on a bench reading a newspaper.",
    "The weather was cold and windy all weekend.",
    "Nobody knows exactly why the dinosaurs disappeared.",
    "The software update fixes several security problems.",
    "We should meet again after lunch to discuss the report.",
    "The orchestra performed music by Mozart and Beethoven.",
    "Farmers expect a good harvest this autumn.",
    "The singer cancelled her tour because of an illness.",
    "This sentence is not grammatical, is it?",
    "John gave Mary a book, and she thanked him.",
]


def corpus() -> list[str]:
    return [s for pair in PAIRS for s in pair] + CORPUS


def reference_inputs(tokenizer):
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def roberta_tokenizer(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(corpus(), vocab_size=BPE_VOCAB_SIZE, min_frequency=2,
                            show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = bpe.save_model(tmp)
        tokenizer = RobertaTokenizerFast(vocab_file=vocab, merges_file=merges,
                                         model_max_length=MAX_LENGTH)
    expected = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def mpnet_vocab() -> list[str]:
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(lowercase=True)
    pre = BertPreTokenizer()
    words = {w for s in corpus() for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(s))}
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[unused0]", "[unused1]", "[UNK]",
             "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(chars)
    vocab += sorted(words - set(chars))
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab.append("<mask>")
    assert len(vocab) == len(set(vocab))
    return vocab


def mpnet_tokenizer(folder: Path):
    """The pipeline and special tokens of all-mpnet-base-v2's tokenizer.json, tiny vocab."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers import processors
    from tokenizers.models import WordPiece
    from transformers import MPNetTokenizerFast

    vocab = mpnet_vocab()
    ids = {t: i for i, t in enumerate(vocab)}
    backend = Tokenizer(WordPiece(ids, unk_token="[UNK]", continuing_subword_prefix="##",
                                  max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.RobertaProcessing(
        sep=("</s>", ids["</s>"]), cls=("<s>", ids["<s>"]), trim_offsets=True,
        add_prefix_space=False)
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    special = {t: AddedToken(t, normalized=False, special=True)
               for t in ("<s>", "<pad>", "</s>", "[UNK]")}
    special["<unk>"] = AddedToken("<unk>", normalized=True, special=True)
    special["<mask>"] = AddedToken("<mask>", lstrip=True, normalized=False, special=True)
    backend.add_special_tokens(sorted(special.values(), key=lambda t: ids[t.content]))
    tokenizer = MPNetTokenizerFast(
        tokenizer_object=backend, do_lower_case=True, model_max_length=MAX_LENGTH,
        bos_token=special["<s>"], eos_token=special["</s>"], sep_token=special["</s>"],
        cls_token=special["<s>"], unk_token=special["[UNK]"], pad_token=special["<pad>"],
        mask_token=special["<mask>"])
    expected = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "[UNK]": 7}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert tokenizer.unk_token == "[UNK]" and tokenizer.mask_token_id == len(vocab) - 1
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def run_torch(model, inputs):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def build(name, folder: Path, out: Path, make_tokenizer, make_model):
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder.mkdir(exist_ok=True)
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(SEED)
    model = make_model(len(tokenizer)).eval()
    model.save_pretrained(str(folder), safe_serialization=True)

    inputs = reference_inputs(tokenizer)
    mask = inputs["attention_mask"]
    assert (mask == 0).any(), "the batch should contain padding"
    # Right-padded: every row is ones then zeros, and the padding is <pad> = 1.
    assert (np.diff(mask, axis=1) <= 0).all() and mask[:, 0].all()
    assert tokenizer.pad_token_id == 1 and tokenizer.cls_token_id == 0
    assert (inputs["input_ids"][mask == 0] == 1).all()
    assert (inputs["input_ids"][:, 0] == 0).all()
    assert (inputs["input_ids"] != tokenizer.unk_token_id).all(), "unknown tokens"
    last, pooled = run_torch(model, inputs)
    # Not degenerate: the real tokens' states differ across positions and sequences.
    real = last[mask.astype(bool)]
    assert np.isfinite(last).all() and np.isfinite(pooled).all()
    assert np.std(real, axis=0).min() > 1e-3 and np.std(pooled, axis=0).max() > 1e-3
    np.savez_compressed(out, **inputs, last_hidden_state=last, pooler_output=pooled)

    # Round trip: the saved folder, loaded by the Auto classes, gives the same.
    reloaded = AutoModel.from_pretrained(str(folder)).eval()
    assert type(reloaded) is type(model)
    re_inputs = reference_inputs(AutoTokenizer.from_pretrained(str(folder)))
    for key in inputs:
        np.testing.assert_array_equal(re_inputs[key], inputs[key])
    re_last, re_pooled = run_torch(reloaded, re_inputs)
    np.testing.assert_array_equal(re_last, last)
    np.testing.assert_array_equal(re_pooled, pooled)

    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < SIZE_LIMIT, (folder, size)
    print(f"{name}: {folder.name}/ ({size} bytes, vocab {len(tokenizer)}), wrote "
          f"{out.name}: batch {last.shape[0]}, length {last.shape[1]}, "
          f"{int(mask.sum())} real tokens; max |last_hidden_state| {np.abs(last).max():.4f}, "
          f"max |pooler_output| {np.abs(pooled).max():.4f}")


def main():
    import tokenizers
    import torch
    import transformers
    from transformers import MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}")
    build("roberta", ROBERTA_DIR, ROBERTA_OUT, roberta_tokenizer,
          lambda vocab_size: RobertaModel(RobertaConfig(
              vocab_size=vocab_size, type_vocab_size=1, bos_token_id=0, eos_token_id=2,
              **COMMON)))
    build("mpnet", MPNET_DIR, MPNET_OUT, mpnet_tokenizer,
          lambda vocab_size: MPNetModel(MPNetConfig(
              vocab_size=vocab_size, relative_attention_num_buckets=32, **COMMON)))


if __name__ == "__main__":
    main()
