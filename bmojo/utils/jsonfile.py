"""Reading the JSON half of bmojo's on-disk formats (checkpoints, corpora) with errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path


def read_json(file: Path, error: type[Exception], what: str) -> dict:
    """The JSON object in `file`, or `error` naming the file when it is missing, unreadable or not an object."""
    if not file.is_file():
        raise error(f"{file}: missing; not a {what}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{file}: holds a JSON {type(data).__name__}, not an object; not a {what}")
    return data
