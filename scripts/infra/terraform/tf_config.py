"""The Terraform configuration as python-hcl2 parses it, with the few evaluations the check needs:
a variable's default, a local, a reference to a resource's attribute, a `jsonencode(…)` of an
object. Anything it cannot evaluate is left as the expression string (`${…}`), which no expected
value equals, so the check fails on it rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

_OPTIONS = SerializationOptions(with_comments=False, strip_string_quotes=True, explicit_blocks=False)
_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)


class ConfigError(Exception):
    """The configuration cannot be read or is not shaped as the check expects."""


@dataclass
class Config:
    directory: Path = Path(".")
    files: list[str] = field(default_factory=list)
    terraform: list[dict] = field(default_factory=list)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, object] = field(default_factory=dict)
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    data: dict[tuple[str, str], dict] = field(default_factory=dict)

    # -- evaluation -------------------------------------------------------------------------------

    def value(self, v, each_key: str | None = None, depth: int = 0):
        """`v` with variables (their defaults), locals and `each.key` put in where it is only that."""
        if depth > 20:
            raise ConfigError(f"references nest too deep at {v!r}")
        if isinstance(v, dict):
            return {k: self.value(x, each_key, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, each_key, depth + 1) for x in v]
        if not isinstance(v, str) or not (m := _EXPR.match(v)):
            return v
        expr = m.group(1).strip()
        if each_key is not None:
            expr = re.sub(r"\[\s*each\.key\s*\]", f'["{each_key}"]', expr)
        if ref := re.fullmatch(r"var\.(\w+)", expr):
            var = self.variables.get(ref.group(1))
            if var is None or "default" not in var:
                return v
            return self.value(var["default"], each_key, depth + 1)
        if ref := re.fullmatch(r'local\.(\w+)(?:\["(\w+)"\])?', expr):
            if ref.group(1) not in self.locals:
                return v
            local = self.value(self.locals[ref.group(1)], each_key, depth + 1)
            if ref.group(2) is not None:
                return local.get(ref.group(2), v) if isinstance(local, dict) else v
            return local
        if call := re.fullmatch(r"jsonencode\((.*)\)", expr, re.S):
            inner = call.group(1).strip()
            if inner.startswith("{"):
                return self.value(
                    hcl2.loads(f"v = {inner}\n", serialization_options=_OPTIONS)["v"], each_key, depth + 1
                )
            return self.value("${" + inner + "}", each_key, depth + 1)
        return "${" + expr + "}"

    @staticmethod
    def reference(v) -> tuple[str, ...] | None:
        """`("aws_sqs_queue", "main", "arn")` for `${aws_sqs_queue.main.arn}`; None for anything else."""
        m = isinstance(v, str) and re.fullmatch(r"\$\{\s*((?:data\.)?[A-Za-z_][\w.]*)\s*\}", v)
        return tuple(m.group(1).split(".")) if m else None

    def of_type(self, kind: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == kind}

    def data_of_type(self, kind: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.data.items() if t == kind}


def load(directory: Path) -> Config:
    files = sorted(directory.glob("*.tf"))
    if not files:
        raise ConfigError(f"no .tf files in {directory}")
    config = Config(directory)
    for path in files:
        try:
            with path.open(encoding="utf-8") as f:
                parsed = hcl2.load(f, serialization_options=_OPTIONS)
        except Exception as e:  # python-hcl2 raises lark's errors, whose types vary by version
            at = re.search(r"at line \d+, column \d+", str(e))
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ConfigError(f"{path.name} does not parse{' ' + at.group(0) if at else ''}: {first}") from e
        config.files.append(path.name)
        config.terraform += parsed.get("terraform", [])
        for block in parsed.get("variable", []):
            config.variables.update(block)
        for block in parsed.get("output", []):
            config.outputs.update(block)
        for block in parsed.get("locals", []):
            config.locals.update(block)
        for section, target in (("resource", config.resources), ("data", config.data)):
            for block in parsed.get(section, []):
                for kind, named in block.items():
                    for name, body in named.items():
                        if (kind, name) in target:
                            raise ConfigError(f"{section} {kind}.{name} is declared twice")
                        target[(kind, name)] = body
    return config
