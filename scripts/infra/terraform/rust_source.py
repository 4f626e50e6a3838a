"""Just enough of Rust's syntax to find functions, their parameters and the calls in them.

Comments and the insides of string and char literals are blanked (newlines kept, so offsets still
give line numbers), and `#[cfg(test)]` items are removed: test code is not in the binaries, so it
needs no IAM right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_CLOSE = {"(": ")", "[": "]", "{": "}"}


def blank(text: str) -> str:
    """`text` with comments and literal contents replaced by spaces (newlines kept)."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (i == 0 or not _ident(text[i - 1])):
            end = text.find('"' + m.group(1), m.end())
            end = n if end < 0 else end
            wipe(m.end(), end)
            i = end + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i + 1, j)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F}'); otherwise a lifetime or label ('a, 'static).
            m = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'").match(text, i)
            if m:
                wipe(i + 1, m.end() - 1)
                i = m.end()
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def _ident(c: str) -> bool:
    return c.isalnum() or c == "_"


def matching(text: str, open_at: int) -> int:
    """Offset of the bracket closing the one at `open_at` (or len(text) if it never closes)."""
    stack = [_CLOSE[text[open_at]]]
    i = open_at + 1
    while i < len(text) and stack:
        c = text[i]
        if c in _CLOSE:
            stack.append(_CLOSE[c])
        elif c in ")]}" and c == stack[-1]:
            stack.pop()
        i += 1
    return i - 1


def split_top(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside any bracket (angle brackets of generics included)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "<" and depth >= 0 and re.match(r"[A-Za-z_&'(\[]", text[i + 1 : i + 2] or " "):
            depth += 1
        elif c == ">" and text[i - 1 : i] != "-" and depth > 0:
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def drop_test_items(text: str) -> str:
    """Blanks every item marked `#[cfg(test)]` (a `mod tests { … }`, a function, a `use`)."""
    out = text
    for m in re.finditer(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", text):
        i = m.end()
        ends = [k for k in (out.find("{", i), out.find(";", i)) if k >= 0]
        if not ends:
            continue
        end = min(ends)
        if out[end] == "{":
            end = matching(out, end)
        out = out[: m.start()] + re.sub(r"[^\n]", " ", out[m.start() : end + 1]) + out[end + 1 :]
    return out


@dataclass
class Function:
    """One `fn` item: where it is, its parameter names and its body (blanked source)."""

    path: Path
    name: str
    line: int
    params: list[str]
    body: str
    body_offset: int
    source: "SourceFile" = field(repr=False)

    def line_of(self, offset_in_body: int) -> int:
        return self.source.line_of(self.body_offset + offset_in_body)

    @property
    def where(self) -> str:
        return f"{self.source.rel}:{self.line}"


@dataclass
class SourceFile:
    path: Path
    rel: str
    text: str

    @property
    def module(self) -> str:
        """The module name a path call uses for this file (`sqs` for src/sqs.rs, `mod.rs` by its folder)."""
        return self.path.parent.name if self.path.stem in ("mod", "lib", "main") else self.path.stem

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def functions(self) -> list[Function]:
        found = []
        for m in re.finditer(r"\bfn\s+([A-Za-z_]\w*)", self.text):
            i = m.end()
            if self.text[i : i + 1] == "<":
                depth = 0
                while i < len(self.text):
                    depth += {"<": 1, ">": -1}.get(self.text[i], 0) if self.text[i - 1 : i] != "-" else 0
                    i += 1
                    if depth == 0:
                        break
            open_paren = self.text.find("(", i)
            close_paren = matching(self.text, open_paren)
            params = [_param_name(p) for p in split_top(self.text[open_paren + 1 : close_paren])]
            # The body is the first `{` after the signature, unless a `;` (a declaration) comes first.
            j = close_paren + 1
            depth = 0
            while j < len(self.text):
                c = self.text[j]
                if c in "([":
                    depth += 1
                elif c in ")]":
                    depth -= 1
                elif depth == 0 and c in "{;":
                    break
                j += 1
            if j >= len(self.text) or self.text[j] == ";":
                continue
            end = matching(self.text, j)
            found.append(
                Function(self.path, m.group(1), self.line_of(m.start()), params, self.text[j + 1 : end], j + 1, self)
            )
        return found


def _param_name(param: str) -> str:
    pattern = param.split(":", 1)[0]
    pattern = re.sub(r"\b(mut|ref)\b|&", " ", pattern).strip()
    return pattern.split()[-1] if pattern else ""


def load(path: Path, root: Path) -> SourceFile:
    text = drop_test_items(blank(path.read_text(encoding="utf-8")))
    return SourceFile(path, str(path.relative_to(root)), text)
