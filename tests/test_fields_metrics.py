"""Key-field serialization and Donut's field F1 / TED accuracy against hand-computed values."""
import pytest

from pixparse.models.hf_code.fields import field_keys, field_tokens, text_to_tree, tree_to_text
from pixparse.tasks.metrics import field_f1, normalize_tree, ted_accuracy, ted_accuracy_one

MENU = {"menu": [{"nm": "tea", "price": "3"}, {"nm": "cake", "price": "6"}], "total": "9"}


def test_serialization_round_trips_nested_lists_and_unicode():
    text = tree_to_text(MENU)
    assert text == ("<s_menu><s_nm>tea</s_nm><s_price>3</s_price><sep/><s_nm>cake</s_nm>"
                    "<s_price>6</s_price></s_menu><s_total>9</s_total>")
    assert text_to_tree(text) == MENU
    tree = {"company": "Café ßüd 東京", "tags": ["a", "b"]}
    assert text_to_tree(tree_to_text(tree)) == tree
    assert field_keys(MENU) == {"menu", "nm", "price", "total"}
    assert field_tokens(["b", "a"]) == ["<sep/>", "<s_a>", "</s_a>", "<s_b>", "</s_b>"]


@pytest.mark.parametrize("text, tree", [
    ("<s_company>ACME</s_company><s_total>9.0", {"company": "ACME", "total": "9.0"}),  # cut off
    ("</s_total>junk<s_company>ACME</s_company>", {"company": "ACME"}),  # stray close, loose text
    ("<s_menu><s_nm>tea</s_menu>", {"menu": {"nm": "tea"}}),  # inner field never closed
    ("", {}),
    ("no fields at all", {}),
    ("<s_total></s_total>", {}),
])
def test_parser_tolerates_malformed_output(text, tree):
    assert text_to_tree(text) == tree


def test_field_f1_and_ted_by_hand():
    ref = {"company": "ACME", "total": "9.00"}
    pred = {"company": "ACNE", "total": "9.00"}
    # 1 pair found, 1 wrong (fp) and 1 missed (fn): 1 / (1 + 2/2)
    assert field_f1([pred], [ref]) == pytest.approx(0.5)
    # one character edit out of inserting everything: company(1)+ACME(4)+total(1)+9.00(4) = 10
    assert ted_accuracy_one(pred, ref) == pytest.approx(0.9)
    assert field_f1([ref], [ref]) == 1.0 and ted_accuracy([ref], [ref]) == 1.0


def test_empty_predictions_and_references():
    ref = {"company": "ACME", "total": "9.00"}
    assert field_f1([{}], [ref]) == 0.0 and ted_accuracy_one({}, ref) == 0.0
    assert field_f1([{}], [{}]) == 1.0 and ted_accuracy_one({}, {}) == 1.0
    assert ted_accuracy_one({"total": "1"}, {}) == 0.0
    assert normalize_tree({"a": "", "b": [], "c": " x "}) == {"c": ["x"]}


def test_nested_list_half_found():
    pred = {"menu": [{"nm": "tea", "price": "3"}]}
    ref = {"menu": MENU["menu"]}
    # 2 of 4 leaf pairs found, none wrong: 2 / (2 + 2/2)
    assert field_f1([pred], [ref]) == pytest.approx(2 / 3)
    # missing subtree: <subtree>, nm, 'cake'(4), price, '6'(1) = 8 of menu(1) + 7 + 8 = 16
    assert ted_accuracy_one(pred, ref) == pytest.approx(0.5)


def test_unicode_edit_distance_counts_characters():
    ref, pred = {"company": "Café ßüd"}, {"company": "Cafe ßüd"}
    assert ted_accuracy_one(pred, ref) == pytest.approx(1 - 1 / 9)  # 1 edit of company(1)+8 chars
    assert field_f1([pred, ref], [ref, ref]) == pytest.approx(1 / (1 + 2 / 2))  # micro over both


def test_reading_scores_by_hand():
    from pixparse.tasks.pretrain import reading_scores

    # 1 substitution in 5 characters; 1 wrong word of 3 ("abc d" + "x": 2 + 1 words)
    scores = reading_scores(["abd d", "x"], ["abc d", "x"])
    assert scores["cer"] == pytest.approx(1 / 6) and scores["wer"] == pytest.approx(1 / 3)
    assert reading_scores(["", "x"], ["abc", "x"])["cer"] == pytest.approx(3 / 4)  # empty prediction
    assert reading_scores(["anything"], [""]) == {}  # nothing to read: no score
    assert reading_scores(["Café"], ["Cafe"])["cer"] == pytest.approx(1 / 4)  # unicode: one character
