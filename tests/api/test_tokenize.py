"""POST /tokenize and /detokenize, as llama-server's test_tokenize."""
import pytest
from server import TINYLLAMA2, ServerProcess

FRANCE = [1, 410, 448, 415, 294, 410, 293, 265, 280, 412, 427, 275, 412, 421, 373, 410, 453, 420, 303, 331, 450]


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        yield s


def test_tokenize_detokenize_round_trip(srv):
    content = "What is the capital of France ?"
    tokens = srv.post("/tokenize", {"content": content}).json()["tokens"]
    assert len(tokens) > 5 and tokens[0] != 1  # add_special defaults to false
    text = srv.post("/detokenize", {"tokens": tokens}).json()["content"]
    assert text == " " + content  # llama-server keeps the SentencePiece space in front


def test_tokenize_with_bos_matches_llama_cpp(srv):
    tokens = srv.post("/tokenize", {"content": "What is the capital of France?", "add_special": True}).json()
    assert tokens["tokens"] == FRANCE  # the golden prompt tokens recorded from llama-server


def test_tokenize_with_pieces(srv):
    res = srv.post("/tokenize", {"content": "This is a test string with unicode 媽 and emoji 🤗",
                                 "with_pieces": True}).json()
    for token in res["tokens"]:
        assert token["id"] > 0 and len(token["piece"]) > 0
    # README example: "á" on stories260K is two byte tokens, shown as their bytes
    res = srv.post("/tokenize", {"content": "á", "with_pieces": True}).json()["tokens"]
    assert res[-2:] == [{"id": 198, "piece": [195]}, {"id": 164, "piece": [161]}]


def test_tokenize_parse_special(srv):
    special = srv.post("/tokenize", {"content": "<s>Hi"}).json()["tokens"]
    plain = srv.post("/tokenize", {"content": "<s>Hi", "parse_special": False}).json()["tokens"]
    assert special[0] == 1 and 1 not in plain


def test_tokenize_mixed_content(srv):
    # content may mix strings and ids, as a prompt
    res = srv.post("/tokenize", {"content": [1, "What"]}).json()["tokens"]
    assert res == [1, 410, 448, 415, 294]


def test_detokenize_renders_special_tokens(srv):
    assert srv.post("/detokenize", {"tokens": FRANCE}).json()["content"] == "<s> What is the capital of France?"
    assert srv.post("/detokenize", {}).json() == {"content": ""}
    assert srv.post("/tokenize", {}).json() == {"tokens": []}


@pytest.mark.parametrize("path,body", [
    ("/detokenize", {"tokens": [1, 99999]}),
    ("/detokenize", {"tokens": [1, -1]}),
    ("/detokenize", {"tokens": "1 2 3"}),
    ("/detokenize", {"tokens": [1, "a"]}),
    ("/tokenize", {"content": 5}),
    ("/tokenize", {"content": "x", "with_pieces": "yes"}),
])
def test_tokenize_bad_input(srv, path, body):
    res = srv.post(path, body)
    assert res.status_code == 400
    assert res.json()["error"]["type"] == "invalid_request_error"
