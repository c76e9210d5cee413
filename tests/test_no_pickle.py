"""No reader loads a pickle except the two that must: `trackedit convert --trust-pickle`
(convert/pickle_to_safetensors.py, torch.load) and TAPVid-3D's restricted unpickler
(data_pipeline/real/readers.py). Checked on the syntax tree of every module of the packages: imports of
pickle-family modules, torch.load / pickle.load(s) / Unpickler calls and subclasses, and np.load without
an explicit allow_pickle=False."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("trackedit_jax", "data_pipeline", "launch", "configs")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
ALLOWED = {
    "trackedit_jax/convert/pickle_to_safetensors.py": {"torch.load"},
    "data_pipeline/real/readers.py": {
        "import pickle",
        "pickle._Unpickler",
        "pickle._Unpickler.dispatch",
        "pickle.BYTEARRAY8",
    },
}


def dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def pickle_uses(source: str) -> set[str]:
    uses = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            uses |= {f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            uses.add(f"import {node.module}")
        elif isinstance(node, ast.Attribute):
            name = dotted(node)
            if name.endswith("Error"):  # pickle.UnpicklingError etc. load nothing
                continue
            if name.split(".")[0] in PICKLE_MODULES or name in ("torch.load", "pd.read_pickle", "pandas.read_pickle"):
                uses.add(name)
        elif isinstance(node, ast.Call) and dotted(node.func) in ("np.load", "numpy.load"):
            flag = next((k.value for k in node.keywords if k.arg == "allow_pickle"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                uses.add("np.load without allow_pickle=False")
    return uses


def test_only_the_two_allowed_readers_unpickle():
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            uses = pickle_uses(path.read_text())
            extra = uses - ALLOWED.get(rel, set())
            if extra:
                found[rel] = sorted(extra)
    assert not found, f"pickle loading outside the two allowed readers: {found}"
    for rel, allowed in ALLOWED.items():  # and the allowed ones are what this test believes they are
        assert pickle_uses((ROOT / rel).read_text()) == allowed, rel


def test_the_checker_sees_the_uses_it_must_refuse():
    samples = {
        "import pickle\npickle.loads(b'')": {"import pickle", "pickle.loads"},
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)": {"np.load without allow_pickle=False"},
        "import numpy as np\nnp.load('x.npy')": {"np.load without allow_pickle=False"},
        "import torch\ntorch.load('m.pt')": {"torch.load"},
        "from dill import loads": {"import dill"},
        "import numpy as np\nnp.load('x.npy', allow_pickle=False)": set(),
    }
    for source, expected in samples.items():
        assert pickle_uses(source) == expected, source
