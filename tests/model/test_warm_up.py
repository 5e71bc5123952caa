"""The load-time warm-up pass: it leaves no trace in what the model computes."""
import numpy as np

from slotserve.model.forward import Llama, Segment
from slotserve.model.loader import load_model


def test_warm_up_changes_no_output(stories_path):
    lm = load_model(stories_path)
    model = Llama(lm.hparams, lm.weights)
    tokens = lm.tokenizer.tokenize("Once upon a time", True, True)
    before = model.forward([Segment(model.new_cache(64, "f32"), tokens)])[0].logits.copy()
    model.warm_up()
    after = model.forward([Segment(model.new_cache(64, "f32"), tokens)])[0].logits
    np.testing.assert_array_equal(before, after)
