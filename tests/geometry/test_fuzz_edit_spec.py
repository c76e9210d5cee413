"""Fuzzing the edit-spec reader (`load_edit_spec`): random YAML/JSON trees built from the spec's own op and
field names, wrong types, huge and non-finite numbers, deep nesting, mutated text; plus the hostile files
a fuzzer rarely finds (alias bombs, cycles, 10,000 nested brackets). Every file must parse into an
`EditSpec` or raise `EditSpecError` with one line naming the file."""

import json

import yaml
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st

from trackedit_jax.geometry.edit_spec import CAMERA_OPS, KEY_FIELDS, OBJECT_OPS, SELECT_FIELDS, load_edit_spec
from trackedit_jax.geometry.spec_source import MAX_SPEC_BYTES, EditSpecError

NAMES = sorted(
    {"camera", "objects", "select", "ops", "op", *CAMERA_OPS, *OBJECT_OPS, *KEY_FIELDS, *SELECT_FIELDS}
    | {f for table in (CAMERA_OPS, OBJECT_OPS) for od in table.values() for f in od.fields}
)
VALID = {
    "camera": [{"op": "arc", "degrees": 30, "axis": [0, -1, 0], "pivot": "centroid"}, {"op": "dolly", "distance": 0.5}],
    "objects": [
        {"select": {"box": [20, 10, 100, 80], "frame": 0}, "ops": [{"op": "translate", "offset": [0.2, 0, 0]}]}
    ],
}

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES + ["all", "centroid", "scene", "linear", "ease_in_out"]),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(NAMES), st.text(max_size=10), st.integers(-3, 3))
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(keys, kids, max_size=5)),
    max_leaves=40,
)


def _near_valid(draw_tree, path_choice):
    """VALID with one value (chosen by `path_choice`) replaced by a random tree."""
    spec = json.loads(json.dumps(VALID))
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            slots.append((node, k))
            if isinstance(v, (dict, list)):
                walk(v)

    walk(spec)
    node, k = slots[path_choice % len(slots)]
    node[k] = draw_tree
    return spec


@st.composite
def spec_texts(draw):
    kind = draw(st.sampled_from(["tree", "near_valid", "mutated_text", "raw_text"]))
    if kind == "raw_text":
        return draw(st.text(max_size=300)), ".yaml"
    if kind == "mutated_text":
        text = yaml.safe_dump(VALID)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(max_size=4)) + text[i + draw(st.integers(0, 4)) :]
        return text, ".yaml"
    data = draw(trees) if kind == "tree" else _near_valid(draw(trees), draw(st.integers(0, 100)))
    if draw(st.booleans()):
        return yaml.safe_dump(data, allow_unicode=draw(st.booleans())), ".yaml"
    try:
        return json.dumps(data), ".json"
    except (ValueError, TypeError):  # keys json cannot write
        return yaml.safe_dump(data), ".yaml"


def test_fuzz_edit_spec_reader(tmp_path):
    @FUZZ
    @given(spec_texts())
    def run(case):
        text, suffix = case
        path = tmp_path / f"edit{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        outcome("edit spec", load_edit_spec, path, errors=(EditSpecError,), names=str(path))

    run()
    counts = report("edit spec")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]  # the generator reaches both valid and invalid specs


HOSTILE = {
    # 9 levels of 9 aliases: 387 million leaves if expanded
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    + "camera: *i\n",
    "alias cycle": "camera: &c [*c]\n",
    "deep brackets": "camera: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "deep json": '{"camera": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "5000-digit int": "camera: [{op: dolly, distance: " + "9" * 5000 + "}]\n",
    "impossible date": "camera: [{op: dolly, distance: 2024-13-45}]\n",
    "mapping key": "camera:\n  ? [a, b]\n  : 1\n",
    "python tag": "camera: !!python/object/apply:os.system ['echo pwned']\n",
    "huge float": "camera: [{op: dolly, distance: 1e999}]\n",
}


def test_hostile_spec_files_are_refused_in_one_line(tmp_path):
    for name, text in HOSTILE.items():
        path = tmp_path / ("spec.json" if "json" in name else "spec.yaml")
        path.write_text(text)
        try:
            load_edit_spec(path)
        except EditSpecError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(path)), (name, msg)
        else:
            raise AssertionError(f"{name}: accepted")
    big = tmp_path / "big.yaml"
    big.write_text("camera: []\n" + "#" * MAX_SPEC_BYTES)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"camera: [{op: dolly, distance: 0.5}] # caf\xe9\n")
    for path in (big, bad):
        try:
            load_edit_spec(path)
        except EditSpecError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            raise AssertionError(f"{path.name}: accepted")
