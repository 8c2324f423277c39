"""io.read_json: the one JSON reader; a missing or damaged file is one UserError line."""

import pytest

from leo_tutorial import UserError
from leo_tutorial.compare import load_rows
from leo_tutorial.io import atomic_write_json, read_json
from leo_tutorial.tune import load_robustness, read_params

MESSAGES = dict(missing="no such file: make it", invalid="damaged ({error}): redo it")


def test_read_json_round_trips_what_atomic_write_json_wrote(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": [1, 2.5, None], "y": float("nan")})
    assert read_json(path, **MESSAGES) == {"x": [1, 2.5, None], "y": None}


def test_missing_file_gives_the_missing_message(tmp_path):
    with pytest.raises(UserError) as info:
        read_json(tmp_path / "none.json", **MESSAGES)
    assert str(info.value) == "no such file: make it"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00"], ids=["syntax", "not-utf8"])
def test_damaged_file_names_the_parser_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_json(path, **MESSAGES)
    message = str(info.value)
    assert message.startswith("damaged (") and message.endswith("): redo it")
    assert "{error}" not in message and len(message) > len("damaged (): redo it")


@pytest.mark.parametrize(
    "loader, fix",
    [
        (load_rows, "run the comparison again"),
        (load_robustness, "bench_robustness.py --save-assets again"),
        (read_params, "is not valid JSON"),
    ],
)
def test_loaders_turn_damaged_json_into_one_line(tmp_path, loader, fix):
    path = tmp_path / "damaged.json"
    path.write_text('{"rows": [1, 2')
    with pytest.raises(UserError) as info:
        loader(path)
    assert str(path) in str(info.value) and fix in str(info.value)
    assert "\n" not in str(info.value)
