"""docs/guide.md cannot rot: its Python snippets run, the code it quotes from a file is that file's code, its recipe
excerpt is the shipped recipe, and its training command composes."""
import re
import shlex
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from modmimic.config import compose, recipes_dir

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "guide.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", GUIDE, flags=re.S | re.M)
QUOTED = re.compile(r"# ((?:components|modmimic|recipes)/\S+)(.*)\n")


def blocks(lang):
    return [body for kind, body in BLOCKS if kind == lang]


def test_guide_has_its_blocks():
    assert len(blocks("python")) >= 3 and len(blocks("yaml")) == 1 and len(blocks("bash")) >= 1


def test_quoted_code_is_the_files_code():
    quoted = [b for b in blocks("python") if QUOTED.match(b)]
    assert quoted
    for body in quoted:
        path, code = QUOTED.match(body).group(1), QUOTED.sub("", body, count=1)
        assert code in (ROOT / path).read_text(), f"docs/guide.md quotes {path} out of date"


def test_python_snippets_run():
    snippets = [b for b in blocks("python") if not QUOTED.match(b)]
    assert snippets
    namespace = {}
    for code in snippets:
        exec(compile(code, "docs/guide.md", "exec"), namespace)


def _without_out(node):
    """Prepare steps' ``out`` lists dropped (the engine takes a function's writes from its declaration)."""
    if isinstance(node, dict):
        return {k: _without_out(v) for k, v in node.items() if k != "out"}
    if isinstance(node, list):
        return [_without_out(v) for v in node]
    return node


def test_recipe_excerpt_is_the_shipped_recipe():
    (body,) = blocks("yaml")
    name = QUOTED.match(body).group(1)
    excerpt = yaml.safe_load(body)
    recipe = yaml.safe_load((ROOT / name).read_text())
    assert (ROOT / name).resolve() == (recipes_dir() / "awac.yaml").resolve()
    for key, value in excerpt.items():
        assert _without_out(value) == _without_out(recipe[key]), f"docs/guide.md: {key} differs from {name}"


def test_training_command_composes():
    body = blocks("bash")[0]  # the AWAC commands
    (line,) = [ln for ln in body.splitlines() if ln.startswith("python -m modmimic.train")]
    args = shlex.split(line.split("#")[0])[3:]
    recipe = [a.split("=", 1)[1] for a in args if a.startswith("recipe=")][0]
    overrides = [a for a in args if not a.startswith(("recipe=", "dataset="))]
    cfg = compose(recipe, overrides)
    for o in overrides:
        key, value = o.split("=", 1)
        assert str(OmegaConf.select(cfg, key)) == value
