"""A LLaMA-3-shaped model end to end: synth-bpe-8M-f16.gguf (the 128,256-token BPE vocabulary, tied output,
rope_freqs, the Llama 3 chat template) through a real slotserve process. Expected values are llama-server
11434's answers on the same file and flags."""
import json

import pytest
from conftest import shared_file
from server import ServerProcess

MESSAGES = [{"role": "system", "content": " sys "}, {"role": "user", "content": "  spaces \n"}]


@pytest.fixture(scope="module")
def golden():
    return json.loads(shared_file("golden", "synth-bpe-8M-f16.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("slots")
    with ServerProcess(shared_file("models", "synth-bpe-8M-f16.gguf"), "-c", "512", "-np", "1", "--temp", "0",
                       "--slot-save-path", str(save_dir), start_timeout=300) as s:
        s.save_dir = save_dir
        yield s


def test_greedy_completions_match_llama_server(srv, golden):
    for case in golden["cases"]:
        body = srv.post("/completion", {"prompt": case["prompt"], "n_predict": len(case["tokens"]),
                                        "cache_prompt": False}).json()
        assert body["tokens_evaluated"] == case["prompt_n"]
        assert body["content"] == case["content"], case["prompt"]


def test_repetitive_output_through_prompt_lookup_drafts(srv):
    # the model repeats one token: prompt-lookup drafts are verified with all-token logits of 128,256 columns
    body = srv.post("/completion", {"prompt": "Hello", "n_predict": 12}).json()
    assert body["content"] == " pimp" * 12  # llama-server: the same 12 tokens 85448


def test_gguf_chat_template_as_llama_server(srv):
    # the GGUF's Llama 3 template trims contents; the <|begin_of_text|> it starts with is dropped, as the
    # vocabulary adds it at tokenization
    prompt = srv.post("/apply-template", {"messages": MESSAGES}).json()["prompt"]
    assert prompt == ("<|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nspaces<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_builtin_llama3_format_as_llama_server():
    # llama-server --no-jinja --chat-template llama3 trims every message (llama.cpp's built-in format)
    with ServerProcess(shared_file("models", "synth-bpe-8M-f16.gguf"), "-c", "256", "-np", "1",
                       "--chat-template", "llama3", start_timeout=300) as s:
        prompt = s.post("/apply-template", {"messages": MESSAGES}).json()["prompt"]
        usage = s.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2}).json()["usage"]
    assert prompt == ("<|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nspaces<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert usage["prompt_tokens"] == 17  # with <|begin_of_text|>, parsed as special


def test_tokenize_pieces_of_a_split_character(srv):
    res = srv.post("/tokenize", {"content": "🦙 <|eot_id|>", "with_pieces": True}).json()["tokens"]
    assert res == [{"id": 9468, "piece": [240, 159]}, {"id": 99, "piece": [166]}, {"id": 247, "piece": [153]},
                   {"id": 220, "piece": " "}, {"id": 128009, "piece": "<|eot_id|>"}]


def test_slot_file_with_kept_logits_restores(srv, golden):
    case = golden["cases"][0]
    first = srv.post("/completion", {"prompt": case["prompt"], "n_predict": 4, "id_slot": 0,
                                     "cache_prompt": True}).json()
    saved = srv.post("/slots/0?action=save", {"filename": "bpe.bin"}).json()
    sidecar = json.loads((srv.save_dir / "bpe.bin.meta.json").read_text())
    assert sidecar["logits"]["n_vocab"] == 128256 and sidecar["logits"]["n_tokens"] == saved["n_saved"]
    assert srv.post("/slots/0?action=erase").status_code == 200
    assert srv.post("/slots/0?action=restore", {"filename": "bpe.bin"}).json()["n_restored"] == saved["n_saved"]
    again = srv.post("/completion", {"prompt": case["prompt"], "n_predict": 4, "id_slot": 0,
                                     "cache_prompt": True}).json()
    assert again["content"] == first["content"]
