from slotserve.engine.text import TextAssembler, complete_utf8_len, partial_stop_len


def test_complete_utf8_len_holds_back_a_cut_character():
    llama = "🦙".encode()
    assert complete_utf8_len(b"ab") == 2
    for cut in range(1, 4):
        assert complete_utf8_len(b"a" + llama[:cut]) == 1
    assert complete_utf8_len(b"a" + llama) == 5


def test_multibyte_character_split_over_tokens_is_sent_whole():
    text = TextAssembler([])
    llama = "🦙".encode()
    assert text.push(b" x" + llama[:2]) == " x"
    assert text.push(llama[2:]) == "🦙"
    assert text.finish() == ""


def test_stop_string_is_cut_and_never_sent_even_across_tokens():
    text = TextAssembler(["END"])
    sent = text.push(b"hello E")
    assert sent == "hello "  # "E" might start the stop string
    sent += text.push(b"N")
    sent += text.push(b"D and more")
    assert text.stopping_word == "END"
    assert sent + text.finish() == "hello " == text.text


def test_false_start_of_a_stop_string_is_released():
    text = TextAssembler(["END"])
    assert text.push(b"an E") == "an "
    assert text.push(b"ND") == ""
    assert text.stopping_word == "END" and text.text == "an "
    text2 = TextAssembler(["END"])
    assert text2.push(b"an E") == "an "
    assert text2.push(b"ggs") == "Eggs"


def test_earliest_stop_string_wins():
    text = TextAssembler(["world", "lo w"])
    text.push(b"hello world")
    assert text.stopping_word == "lo w" and text.text == "hel"


def test_partial_stop_len():
    assert partial_stop_len("abc", ["cd", "bcx"]) == 2
    assert partial_stop_len("abc", ["x"]) == 0
