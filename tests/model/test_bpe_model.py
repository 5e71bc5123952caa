"""Loading a LLaMA-3-shaped model: tied output embeddings, Llama 3.1's rope_freqs, rope base, BPE metadata.
(Its numbers against llama.cpp are in test_forward_golden.py.)"""
import numpy as np
import pytest
from gguf import GGUFValueType
from test_loader import rewrite  # tests/model is on sys.path: pytest puts each test file's directory there

from slotserve.model.forward import Llama, RopeTable
from slotserve.model.loader import ModelLoadError, load_model


def test_llama3_shape_loads(bpe_model):
    hp, w, tok = bpe_model.hparams, bpe_model.weights, bpe_model.tokenizer
    assert (hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_rot) == (128256, 128, 4, 4, 2, 32)
    assert hp.rope_freq_base == 500000.0
    assert (hp.bos_id, hp.eos_id) == (128000, 128001) and tok.add_bos
    assert w.output is w.tok_embd  # no output.weight: the embeddings are tied, not copied
    assert w.rope_freqs.shape == (16,) and w.rope_freqs[0] == 1.0 and w.rope_freqs[-1] == 8.0
    assert bpe_model.chat_template.startswith("{% set loop_messages = messages %}")


def test_rope_freqs_divide_the_angles(bpe_model):
    hp = bpe_model.hparams
    plain, scaled = RopeTable(hp.n_rot, hp.rope_freq_base), Llama(hp, bpe_model.weights).rope
    pos = np.array([0, 1, 7, 300])
    a, b = np.angle(plain.angles(pos)), np.angle(scaled.angles(pos))
    ff = bpe_model.weights.rope_freqs
    np.testing.assert_allclose(b[1:, 0, ff == 1.0], a[1:, 0, ff == 1.0], rtol=0, atol=0)
    # small angles (no wrap-around): the scaled one is the plain one over its factor
    low = (ff > 1.0) & (np.abs(a[1, 0]) < 1.0)
    np.testing.assert_allclose(b[1, 0, low], a[1, 0, low] / ff[low], rtol=1e-6)


def test_rope_scaling_with_a_factor_is_refused(stories_path, tmp_path):
    dst = tmp_path / "scaled.gguf"
    rewrite(stories_path, dst, extra={"llama.rope.scaling.type": ("linear", GGUFValueType.STRING),
                                      "llama.rope.scaling.factor": (4.0, GGUFValueType.FLOAT32)})
    with pytest.raises(ModelLoadError, match=r"rope scaling 'linear' \(factor 4\) is not supported"):
        load_model(dst)
