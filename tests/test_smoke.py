from conftest import assert_one_error_line, run_cli


def test_missing_file_is_one_error_line(tmp_path):
    r = run_cli("inspect", tmp_path / "nope.pt")
    assert_one_error_line(r)
    assert "no such file" in r.stderr


def test_bad_option_is_one_error_line(tmp_path):
    r = run_cli("inspect", tmp_path, "--bogus")
    assert_one_error_line(r)
