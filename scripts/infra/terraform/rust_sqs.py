"""Which SQS actions each binary calls, on which queue, found in the Rust sources.

Every SDK call (`client.send_message_batch()…send()`) is mapped to its IAM action and to the queue
its builder names (`.queue_url(X)` or `.queue_name(X)`). X names its queue by convention, which is
the code's own: anything with `dlq` or `dead_letter` in it is the dead-letter queue, anything with
`main`, `queue_url` or `accrual_queue` the main queue. A parameter is resolved at each call site of
its function, and a local through its `let`. A call whose queue cannot be told this way is an
error naming the line: better to fail than to grant on a guess.

Roles and where their code starts:
- sender, listener: every function of crates/sender/src, crates/listener/src;
- init, dlq_operator: the `Command::Init`, `Command::Dlq` arms of accrualctl's main;
each with whatever crates/core/src functions they reach by path (`sqs::find_queue(…)`) or bare
(`queue_url(…)`) calls. Method calls are not followed, so a core or accrualctl function that calls
SQS and is reached by no role is an error too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rust_source import Function, SourceFile, load, matching, split_top

MAIN, DLQ = "main", "dlq"

# aws-sdk-sqs operation (snake case, as called on the client) -> the IAM action that authorises it.
# The batch forms are authorised by the single action.
SDK_ACTIONS = {
    "add_permission": "sqs:AddPermission",
    "cancel_message_move_task": "sqs:CancelMessageMoveTask",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "create_queue": "sqs:CreateQueue",
    "delete_message": "sqs:DeleteMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "delete_queue": "sqs:DeleteQueue",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "get_queue_url": "sqs:GetQueueUrl",
    "list_dead_letter_source_queues": "sqs:ListDeadLetterSourceQueues",
    "list_message_move_tasks": "sqs:ListMessageMoveTasks",
    "list_queue_tags": "sqs:ListQueueTags",
    "list_queues": "sqs:ListQueues",
    "purge_queue": "sqs:PurgeQueue",
    "receive_message": "sqs:ReceiveMessage",
    "remove_permission": "sqs:RemovePermission",
    "send_message": "sqs:SendMessage",
    "send_message_batch": "sqs:SendMessage",
    "set_queue_attributes": "sqs:SetQueueAttributes",
    "start_message_move_task": "sqs:StartMessageMoveTask",
    "tag_queue": "sqs:TagQueue",
    "untag_queue": "sqs:UntagQueue",
}
_SDK_CALL = re.compile(r"\.\s*(" + "|".join(sorted(SDK_ACTIONS, key=len, reverse=True)) + r")\s*\(\s*\)")
_CALL = re.compile(r"(?<![\w.])((?:[A-Za-z_]\w*\s*::\s*)*)([A-Za-z_]\w*)\s*(?:::\s*<[^;{}]*?>\s*)?\(")
# accrualctl subcommands -> role. A subcommand not listed here must not call SQS.
CTL_ARMS = {"Init": "init", "Dlq": "dlq_operator"}


class ScanError(Exception):
    """The sources could not be read with certainty; the message names the place."""


@dataclass(frozen=True)
class Param:
    """A queue given by the caller, as the function's parameter number `index`."""

    index: int


@dataclass(frozen=True)
class Use:
    action: str
    queue: object  # MAIN, DLQ or Param
    site: str  # file:line of the SDK call
    via: str = ""  # file:line of the outermost call that leads to it, when not the same place


@dataclass(frozen=True)
class Scope:
    """Code a role's needs are collected from: a whole function, or one match arm of one."""

    fn: Function
    text: str
    offset: int  # of `text` within fn.body


class Scanner:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, list[SourceFile]] = {}
        for crate in ("core", "sender", "listener", "ctl"):
            src = root / "crates" / crate / "src"
            if not src.is_dir():
                raise ScanError(f"{src} is missing")
            self.files[crate] = [load(p, root) for p in sorted(src.rglob("*.rs"))]
        self.functions = {crate: [f for s in files for f in s.functions()] for crate, files in self.files.items()}
        self._summaries: dict[int, set[Use]] = {}
        self._busy: set[int] = set()
        self.reached: set[int] = set()

    # -- queues named by expressions ----------------------------------------------------------

    def classify(self, expr: str, scope: Scope, seen: frozenset = frozenset()):
        """MAIN, DLQ, Param(i), or None when `expr` does not say which queue."""
        e = re.sub(r"^[&*\s]+|\bmut\s+", "", expr.strip())
        e = re.sub(r"(\s*\.\s*(clone|as_str|as_ref|as_deref|to_string|to_owned)\s*\(\s*\))+$", "", e)
        if not re.fullmatch(r"[A-Za-z_]\w*(\s*\.\s*[A-Za-z_]\w*)*", e):
            return None
        segs = [s.strip() for s in e.split(".")]
        if len(segs) == 1 and segs[0] in scope.fn.params:
            return Param(scope.fn.params.index(segs[0]))
        words = [s.split("_") for s in segs]
        if any("dlq" in w or re.search(r"dead_letters?", s) for s, w in zip(segs, words, strict=True)):
            return DLQ
        if any("main" in w or s in ("queue_url", "accrual_queue") for s, w in zip(segs, words, strict=True)):
            return MAIN
        if len(segs) == 1 and segs[0] not in seen:
            return self._classify_local(segs[0], scope, seen | {segs[0]})
        return None

    def _classify_local(self, name: str, scope: Scope, seen: frozenset):
        """A local's queue, from what its `let` (or `if let Ok(name) =`) binds it to."""
        body = scope.fn.body
        pattern = rf"\blet\s+(?:mut\s+)?{name}\b[^=;]*=(?!=)|\b(?:Ok|Some)\s*\(\s*{name}\s*\)\s*=(?!=)"
        for m in re.finditer(pattern, body):
            end = min([k for k in (body.find(";", m.end()), body.find("{", m.end())) if k >= 0] or [len(body)])
            rhs = body[m.end() : end]
            named = [a for a in re.findall(r"\.\s*queue_(?:url|name)\s*\(([^()]+)\)", rhs)]
            args = [a for c in _CALL.finditer(rhs) for a in split_top(rhs[c.end() : matching(rhs, c.end() - 1)])]
            receiver = re.match(r"\s*([A-Za-z_]\w*)", rhs)
            local = Scope(scope.fn, body, 0)
            # What the right-hand side names as a queue, else its arguments, else its receiver.
            for candidates in (named, args, [receiver.group(1)] if receiver else []):
                found = {q for q in (self.classify(c, local, seen) for c in candidates) if q is not None}
                if len(found) == 1:
                    return found.pop()
                if found:
                    return None
        return None

    # -- what a function calls ------------------------------------------------------------------

    def sdk_uses(self, scope: Scope) -> set[Use]:
        """The SQS calls written in `scope` itself, each with its queue."""
        uses = set()
        for m in _SDK_CALL.finditer(scope.text):
            op = m.group(1)
            send = scope.text.find(".send()", m.end())
            chain = scope.text[m.end() : send if send >= 0 else len(scope.text)]
            site = f"{scope.fn.source.rel}:{scope.fn.line_of(scope.offset + m.start())}"
            target = re.search(r"\.\s*queue_(?:url|name)\s*\(", chain)
            if not target:
                raise ScanError(f"{site}: `{op}` names no queue (no .queue_url(…) before .send())")
            arg = chain[target.end() : matching(chain, target.end() - 1)]
            queue = self.classify(arg, scope)
            if queue is None:
                raise ScanError(
                    f"{site}: cannot tell which queue `{op}` uses from `{arg.strip()}`; name it with "
                    "`dlq`/`main` (e.g. dlq_url, main_url) so the IAM check can follow it"
                )
            uses.add(Use(SDK_ACTIONS[op], queue, site))
        return uses

    def calls(self, scope: Scope, crate: str):
        """(callee, argument expressions, file:line) for each call in `scope` to a function of ours."""
        for m in _CALL.finditer(scope.text):
            if re.search(r"\bfn\s*$", scope.text[max(0, m.start() - 8) : m.start()]):
                continue
            path = [s.strip() for s in m.group(1).split("::") if s.strip()]
            callee = self.resolve(path, m.group(2), scope.fn.source, crate)
            if callee is not None:
                open_paren = m.end() - 1
                args = split_top(scope.text[open_paren + 1 : matching(scope.text, open_paren)])
                yield callee, args, f"{scope.fn.source.rel}:{scope.fn.line_of(scope.offset + m.start())}"

    def resolve(self, path: list[str], name: str, here: SourceFile, crate: str) -> Function | None:
        pool = self.functions[crate] + (self.functions["core"] if crate != "core" else [])
        named = [f for f in pool if f.name == name and "self" not in f.params]
        if path and path[-1] not in ("crate", "self", "super", "Self"):
            named = [f for f in named if f.source.module == path[-1]]
        elif not path:
            same_file = [f for f in named if f.source is here]
            imported = [f for f in named if re.search(rf"\buse\b[^;]*\b{f.source.module}\b[^;]*\b{name}\b", here.text)]
            named = same_file or imported or (named if len(named) == 1 else [])
        return named[0] if len(named) == 1 else None

    def summary(self, fn: Function, crate: str) -> set[Use]:
        """Every SQS use `fn` makes, directly or through the functions it calls; a queue that is
        one of fn's parameters stays a Param for its callers to resolve."""
        key = id(fn)
        if key in self._summaries:
            return self._summaries[key]
        if key in self._busy:  # recursion: what the cycle adds is found on the way out
            return set()
        self._busy.add(key)
        uses = self.scope_uses(Scope(fn, fn.body, 0), crate)
        self._busy.discard(key)
        self._summaries[key] = uses
        return uses

    def scope_uses(self, scope: Scope, crate: str) -> set[Use]:
        self.reached.add(id(scope.fn))
        uses = self.sdk_uses(scope)
        for callee, args, call_site in self.calls(scope, crate):
            self.reached.add(id(callee))
            callee_crate = "core" if any(callee is f for f in self.functions["core"]) else crate
            for use in self.summary(callee, callee_crate):
                if not isinstance(use.queue, Param):
                    uses.add(Use(use.action, use.queue, use.site, call_site))
                    continue
                if use.queue.index >= len(args):
                    raise ScanError(f"{scope.fn.where}: call to {callee.name} has too few arguments")
                queue = self.classify(args[use.queue.index], scope)
                if queue is None:
                    raise ScanError(
                        f"{scope.fn.where}: cannot tell which queue `{args[use.queue.index]}` is "
                        f"(passed to {callee.name}, which calls {use.action} on it)"
                    )
                uses.add(Use(use.action, queue, use.site, call_site))
        return uses

    # -- roles ---------------------------------------------------------------------------------

    def ctl_arms(self) -> list[tuple[str, Scope]]:
        main = [f for f in self.functions["ctl"] if f.name == "main" and f.source.path.name == "main.rs"]
        if len(main) != 1:
            raise ScanError("crates/ctl/src/main.rs: no single `fn main`")
        body = main[0].body
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"\bCommand\s*::\s*([A-Z]\w*)", body)]
        ends = [start for start, _ in starts[1:]] + [len(body)]
        return [(arm, Scope(main[0], body[start:end], start)) for (start, arm), end in zip(starts, ends, strict=True)]

    def needs(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        """role -> queue -> IAM action -> the SDK call sites that need it."""
        per_role: dict[str, set[Use]] = {}
        for crate in ("sender", "listener"):
            uses = set()
            for fn in self.functions[crate]:
                uses |= self.summary(fn, crate)
            per_role[crate] = uses
        for arm, scope in self.ctl_arms():
            uses = self.scope_uses(scope, "ctl")
            if arm in CTL_ARMS:
                per_role[CTL_ARMS[arm]] = per_role.get(CTL_ARMS[arm], set()) | uses
            elif uses:
                raise ScanError(
                    f"accrualctl {arm.lower()} calls SQS ({', '.join(sorted({u.action for u in uses}))}) "
                    "but no IAM policy is meant for it: add it to CTL_ARMS and a policy to iam.tf"
                )
        for crate in ("core", "ctl"):
            for fn in self.functions[crate]:
                if id(fn) not in self.reached and self.sdk_uses(Scope(fn, fn.body, 0)):
                    raise ScanError(
                        f"{fn.where}: `{fn.name}` calls SQS but no role reaches it by a path or bare "
                        "call (a method call?), so its rights cannot be checked"
                    )
        for crate in ("sender", "listener"):
            for fn in self.functions[crate]:
                if any(isinstance(u.queue, Param) for u in self.summary(fn, crate)) and not any(
                    callee is fn
                    for f in self.functions[crate]
                    for callee, _, _ in self.calls(Scope(f, f.body, 0), crate)
                ):
                    raise ScanError(f"{fn.where}: `{fn.name}` takes its queue as a parameter and no caller is found")
        out: dict[str, dict[str, dict[str, list[str]]]] = {}
        for role, uses in per_role.items():
            table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
            for use in sorted(uses, key=lambda u: (str(u.queue), u.action, u.site)):
                if isinstance(use.queue, Param):
                    continue  # resolved at the call sites, which are in `uses` too
                table[use.queue][use.action].append(f"{use.site} via {use.via}" if use.via else use.site)
            out[role] = {q: dict(actions) for q, actions in table.items()}
        return out
