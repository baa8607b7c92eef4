"""Input that would reach users as a raw exception (a tokenizer's type error, "unhashable type")
is refused at the boundary with a line that says what was wrong with it."""
import pytest

from specviz import models
from specviz.api import encode_prompt


class NoTokenizer:
    """Fails the test if the prompt gets as far as the tokenizer."""

    chat_template = None

    def __call__(self, *args, **kwargs):
        raise AssertionError("bad input reached the tokenizer")


@pytest.mark.parametrize("prompt, reason", [
    ("Explain \ud800 caches", "character 8 is a lone surrogate"),
    ("\udcff", "lone surrogate"),  # what a non-UTF-8 byte in argv becomes (surrogateescape)
    (["a", "list"], "the prompt must be text, got list"),
    (None, "must be text, got NoneType"),
    ("   ", "the prompt is empty"),
])
def test_a_bad_prompt_is_refused_before_the_tokenizer(prompt, reason):
    with pytest.raises(ValueError, match=reason):
        encode_prompt(NoTokenizer(), prompt, chat=False)


@pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m is not installed")
def test_a_lone_surrogate_with_the_real_tokenizer():
    from specviz.api import load_model

    _, tokenizer, _ = load_model("smollm2-135m")
    with pytest.raises(TypeError):  # what users saw: "TextEncodeInput must be Union[...]"
        tokenizer("a\ud800b", add_special_tokens=False)
    for chat in (False, True):
        with pytest.raises(ValueError, match="lone surrogate"):
            encode_prompt(tokenizer, "a\ud800b", chat=chat)
    assert encode_prompt(tokenizer, "a b", chat=False)


@pytest.mark.parametrize("field", ["target", "drafter", "strategy", "rule"])
def test_a_list_where_a_name_belongs_is_refused_by_the_app(field):
    from specviz.ui import read_request

    given = dict(prompt="hello", target="smollm2-135m", drafter="pld", strategy="chain", draft_len=4,
                 temperature=0.0, top_p=1.0, seed=0, max_new_tokens=8, rule="auto")
    given[field] = ["smollm2-135m"]
    with pytest.raises(ValueError, match="must be a name, got a list"):
        read_request(**given)
