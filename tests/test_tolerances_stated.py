"""README.md states the tolerances the oracle tests assert, in words made from the same constants."""

from pathlib import Path

from tolerances import stated

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_states_the_tolerances_the_tests_assert():
    text = " ".join(README.read_text(encoding="utf-8").split())   # wrapped lines read as one
    assert stated() in text, f"README.md should say, word for word:\n{stated()}"
