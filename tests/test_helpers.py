"""The test helpers themselves: require() skips, or fails under TINYGRAD_GPT_REQUIRE_REFERENCE=1;
shared_data() finds the book's files."""
import pytest

import helpers


def test_require_returns_the_module_skips_without_it_and_fails_when_reference_is_required(monkeypatch):
    assert helpers.require("json").dumps([1]) == "[1]"
    monkeypatch.setattr(helpers, "REQUIRE_REFERENCE", False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz does not import"):
        helpers.require("no_such_module_xyz")
    with pytest.raises(pytest.skip.Exception, match="not on PATH"):
        helpers.require("no-such-program-xyz", program=True)
    monkeypatch.setattr(helpers, "REQUIRE_REFERENCE", True)
    with pytest.raises(pytest.fail.Exception, match="TINYGRAD_GPT_REQUIRE_REFERENCE=1 but no_such_module_xyz"):
        helpers.require("no_such_module_xyz")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-xyz"):
        helpers.require("no-such-program-xyz", program=True)


def test_shared_data_looks_in_the_environment_variable_first(monkeypatch, tmp_path):
    (tmp_path / "book.txt").write_text("x")
    monkeypatch.setenv("TINYGRAD_GPT_SHARED_DATA", str(tmp_path))
    assert helpers.shared_data("book.txt") == tmp_path / "book.txt"
    assert helpers.shared_data("absent-file.txt") is None
