import pytest

from curation.parsing import parse_paraphrases


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here are three ways to say it:\n1. The cat rested on the rug.\n2) \"A cat was sitting on the mat.\"\n"
         "- On the mat sat the cat.\nI hope this helps!",
         ["The cat rested on the rug.", "A cat was sitting on the mat.", "On the mat sat the cat."]),
        ("1. A b c. 2. D e f. 3. G h i.", ["A b c.", "D e f.", "G h i."]),
        ('["one two", "three four"]', ["one two", "three four"]),
        ('```json\n{"paraphrases": ["x y", "z w"]}\n```', ["x y", "z w"]),
        ("Paraphrase: The dog barked loudly.", ["The dog barked loudly."]),
        ('Sure! "The weather is nice today."', ["The weather is nice today."]),
        ("**Rewritten sentence:** The boy ran home.", ["The boy ran home."]),
        ("• “It rained all day.”\n• It poured the whole day.", ["It rained all day.", "It poured the whole day."]),
        ("1. Same.\n2. Same.", ["Same."]),
    ],
)
def test_list_outputs(text, expected):
    items, err = parse_paraphrases(text, "list")
    assert err is None and items == expected


def test_single_mode_keeps_the_first_item():
    assert parse_paraphrases("Sure, here it is:\nThe cat slept.\nThe dog ran.", "single") == (["The cat slept."],
                                                                                               None)


@pytest.mark.parametrize(("text", "error"), [("", "empty output"), (None, "empty output"),
                                             ("Here are some paraphrases:", "no paraphrase found in output"),
                                             ("1.\n2.\n---", "no paraphrase found in output")])
def test_outputs_with_nothing_get_a_parse_error(text, error):
    assert parse_paraphrases(text, "list") == ([], error)
