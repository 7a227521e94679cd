"""Nothing in the package unpickles from disk, and file names from configs cannot leave their folder."""
import ast
import json
from pathlib import Path

import pytest

import bmojo
from bmojo.config import ConfigError
from bmojo.utils.paths import inside

PACKAGE = Path(bmojo.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _unsafe_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(node.module)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name == "load" and owner == "torch":
                found.append("torch.load")
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                found.append(f"{name}(allow_pickle=...)")
            if name in ("load_state_dict_from_url", "load_url"):
                found.append(name)
    return found


def test_the_scanner_sees_each_unsafe_form():
    src = "import pickle\nfrom joblib import load\nimport torch\ntorch.load('x')\nimport numpy as np\n" \
          "np.load('x', allow_pickle=True)\n"
    assert sorted(_unsafe_uses(ast.parse(src))) == sorted(["pickle", "joblib", "torch.load", "load(allow_pickle=...)"])


def test_no_module_of_the_package_can_unpickle():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    bad = {str(f.relative_to(PACKAGE)): u for f in files if (u := _unsafe_uses(ast.parse(f.read_text())))}
    assert not bad, f"unpickling code paths: {bad}"


@pytest.mark.parametrize("name", ["../x.bin", "/etc/passwd", "a/../../x", "", None, 3])
def test_names_that_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="must be a relative|leads outside"):
        inside(tmp_path, name, "file")


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="leads outside"):
        inside(tmp_path / "root", "link/secret", "file")
    assert inside(tmp_path / "root", "sub/ok.bin", "file") == tmp_path / "root" / "sub" / "ok.bin"


def test_a_corpus_manifest_cannot_point_outside_its_folder(tmp_path):
    from bmojo.data.text.corpus import TokenCorpus, prepare

    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("hello world\n" * 200)
    (src / "b.txt").write_text("another text\n" * 200)
    folder = prepare(str(src), root=tmp_path / "data")
    (tmp_path / "secret.bin").write_bytes(b"x" * 10)
    m = json.loads((folder / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["file"] = "../../../secret.bin"
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="splits.train.shards.file.*leads outside"):
        TokenCorpus(folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["file"] = "train-00000.bin"
    m["splits"]["train"]["index"] = "../../../secret.bin"
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="splits.train.index.*leads outside"):
        TokenCorpus(folder).split_documents("train")
