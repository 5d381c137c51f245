"""The grammar module (nodes/text/grammar.py): every way a user names parts of a prompt, parsed without a prompt:
selections, phrases, manual keeps, binding groups, marks and token spellings."""

import pytest


@pytest.fixture(scope="module")
def g(leakless):
    import leakless.nodes.text.grammar as grammar

    return grammar


def test_selections(g):
    P, R = g.PhraseRef, g.PositionRef
    assert g.parse_refs("cow; horse\ncow, horse , 3, 5-7\n\n cat#2 ") == [
        [P("cow")], [P("horse")], [P("cow"), P("horse"), R(3, 3), R(5, 7)], [P("cat", 2)]]
    assert g.parse_refs("  ;\n ") == []
    assert str(P("cat", 2)) == "cat#2" and str(R(5, 7)) == "5-7"
    assert g.parse_refs('"1984", @3, @5-7') == [[P("1984", quoted=True), R(3, 3, bare=False), R(5, 7, bare=False)]]
    for bad, message in (("9-3", "empty range"), ("cat#0", "count from 1"), ('"cat', "unclosed"),
                         ('big "cat"', "quotes go around a whole phrase")):
        with pytest.raises(g.SelectionError, match=message):
            g.parse_refs(bad)


def test_phrases_are_never_positions(g):
    P = g.PhraseRef
    assert g.parse_phrases("1984, 2-3; 7", "entities") == [P("1984"), P("2-3"), P("7")]
    assert g.parse_phrases('"a, b", c', "items") == [P("a, b", quoted=True), P("c")]
    with pytest.raises(g.SelectionError, match=r"entities are words of the prompt, not token positions \('@3'\)"):
        g.parse_phrases("cow, @3", "entities")


def test_manual_keeps(g):
    assert g.parse_manual("pelican: lic; golden gate bridge: gate, 1") == [
        ("pelican", ["lic"]), ("golden gate bridge", ["gate", "1"])]
    assert g.parse_manual(" ;\n") == []
    with pytest.raises(g.SelectionError, match="does not say which tokens"):
        g.parse_manual("pelican")
    with pytest.raises(g.SelectionError, match="needs an item before ':'"):
        g.parse_manual(": lic")


def test_groups(g):
    cat, dog = g.parse_groups("cat: wearing sunglasses\n dog: wearing a hat, red")
    assert cat.noun == g.PhraseRef("cat") and cat.attributes == (g.PhraseRef("wearing sunglasses"),)
    assert dog.attributes == (g.PhraseRef("wearing a hat"), g.PhraseRef("red"))
    assert g.parse_groups('poster: "1984"')[0].attributes == (g.PhraseRef("1984", quoted=True),)
    for bad, message in (("cat wearing", "is not 'noun: attribute"), ("cat, dog: red", "one noun per group"),
                         ("cat:", "no attributes")):
        with pytest.raises(g.SelectionError, match=message):
            g.parse_groups(bad)


def test_marks(g):
    assert g.split_marked("a **cow** and a ** horse**") == ("a cow and a  horse", [("cow", 2), ("horse", 13)])
    assert g.split_marked("no marks") == ("no marks", [])


def test_token_spellings(g):
    assert g.spelling("\u2581cat") == "cat" and g.spelling("cat</w>") == "cat"
    assert g.spelling("\u0120dog") == "dog" and g.spelling("\u010a") == "\\n"


def test_a_number_with_a_thousands_comma_says_to_quote_it(g):
    """Everywhere nothing is a position, '1,000' would read as the phrases '1' and '000': an error that says how to
    write it; quoted, it is one phrase. Selections keep '3,5' as two positions."""
    for text in ("1,000", "1,000 cows, horse", "horse; 2,5"):
        with pytest.raises(g.SelectionError, match=r'write "[0-9]+,[0-9]+( cows)?" in double quotes'):
            g.parse_phrases(text, "entities")
    assert [str(r) for r in g.parse_phrases('"1,000", horse', "entities")] == ['"1,000"', "horse"]
    assert [str(r) for r in g.parse_phrases("2, 3", "entities")] == ["2", "3"]
    assert g.parse_refs("3,5") == [[g.PositionRef(3, 3), g.PositionRef(5, 5)]]


def test_parts_count_what_the_parsers_read(g):
    assert g.parts("cow; horse\n\n ;cat, dog", ";\n") == ["cow", "horse", "cat, dog"]
    assert g.parts('"a;b"; c', ";\n") == ['"a;b"', "c"]
    assert g.parts('"a;b', ";\n") == ['"a', "b"]  # an unclosed quote: counted as plain text
    assert g.parts("", ";\n") == []
