"""Holds infra/terraform to the code: queue settings to the code's defaults, each IAM policy to the
SQS calls its binary makes. Usage: check_terraform.py ROOT (a checkout, or a copy of one).

Prints one line per mismatch and exits 1, or a summary of what was checked and exits 0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tf_config
from rust_sqs import DLQ, MAIN, SDK_ACTIONS, ScanError, Scanner

# What a policy grants beyond our code's calls, or leaves out of them, and why. Each entry must
# still match the code (a need of that role's code), or the check says it is stale.
NOT_GRANTED = {
    (
        "init",
        MAIN,
        "sqs:CreateQueue",
    ): "Terraform creates the queue; ensure_queue calls CreateQueue only when GetQueueUrl finds none",
    (
        "init",
        DLQ,
        "sqs:CreateQueue",
    ): "Terraform creates the queue; ensure_queue calls CreateQueue only when GetQueueUrl finds none",
    (
        "init",
        DLQ,
        "sqs:SetQueueAttributes",
    ): "ensure_queues gives the DLQ no attributes, and ensure_queue sets none then",
}
IAM_ACTIONS = {a.lower(): a for a in SDK_ACTIONS.values()}
QUEUE_WORDS = {MAIN: "main queue", DLQ: "DLQ"}


def code_defaults(root: Path) -> dict[str, object]:
    """The defaults of the clap settings (`env = "X", default_value… = Y`) and the constants the
    queues depend on, read from the Rust sources."""
    found: dict[str, tuple[object, str]] = {}
    for path in sorted((root / "crates").glob("*/src/**/*.rs")):
        text = path.read_text(encoding="utf-8")
        for attr in re.finditer(r"#\[arg\((.*?)\)\]", text, re.S):
            env = re.search(r'\benv\s*=\s*"(\w+)"', attr.group(1))
            default = re.search(r'\bdefault_value(?:_t)?\s*=\s*(?:"([^"]*)"|(\d+)\b)', attr.group(1))
            if not (env and default):
                continue
            value = default.group(1) if default.group(1) is not None else int(default.group(2))
            where = f"{path.relative_to(root)}:{text.count(chr(10), 0, attr.start()) + 1}"
            if env.group(1) in found and found[env.group(1)][0] != value:
                raise ScanError(f"{env.group(1)} has two defaults: {found[env.group(1)][1]} and {where}")
            found[env.group(1)] = (value, where)
    sqs = (root / "crates/core/src/sqs.rs").read_text(encoding="utf-8")
    options = re.search(r"impl\s+Default\s+for\s+QueueOptions\s*\{(.*?)\n\}", sqs, re.S)
    batch = re.search(r"const\s+MAX_BATCH_BYTES\s*:\s*usize\s*=\s*([\d_\s*]+);", sqs)
    if not (options and batch):
        raise ScanError("crates/core/src/sqs.rs: QueueOptions::default or MAX_BATCH_BYTES not found")
    for field in ("max_receive_count", "visibility_timeout_secs"):
        m = re.search(rf"\b{field}\s*:\s*(\d+)", options.group(1))
        if not m:
            raise ScanError(f"crates/core/src/sqs.rs: QueueOptions::default sets no {field}")
        found[f"QueueOptions.{field}"] = (int(m.group(1)), "crates/core/src/sqs.rs")
    product = 1
    for factor in batch.group(1).split("*"):
        product *= int(factor.replace("_", "").strip())
    found["MAX_BATCH_BYTES"] = (product, "crates/core/src/sqs.rs")
    needed = ("ACCRUAL_QUEUE", "ACCRUAL_DLQ", "MAX_RECEIVE_COUNT", "VISIBILITY_TIMEOUT_SECS", "AWS_REGION")
    missing = [n for n in needed if n not in found]
    if missing:
        raise ScanError(f"no clap default found for {', '.join(missing)} in crates/*/src")
    for env, field in (
        ("MAX_RECEIVE_COUNT", "max_receive_count"),
        ("VISIBILITY_TIMEOUT_SECS", "visibility_timeout_secs"),
    ):
        if found[env][0] != found[f"QueueOptions.{field}"][0]:
            raise ScanError(
                f"the code disagrees with itself: {env} defaults to {found[env][0]} ({found[env][1]}) "
                f"but QueueOptions::default has {field} {found[f'QueueOptions.{field}'][0]}"
            )
    return {k: v for k, (v, _) in found.items()} | {f"{k}@": w for k, (_, w) in found.items()}


def check_queues(config: tf_config.Config, code: dict, problems: list[str]) -> dict[str, str]:
    """Checks the two aws_sqs_queue resources; returns {MAIN: resource name, DLQ: resource name}."""
    queues = config.of_type("aws_sqs_queue")
    by_name = {config.value(body.get("name")): name for name, body in queues.items()}
    found = {}
    for role, env in ((MAIN, "ACCRUAL_QUEUE"), (DLQ, "ACCRUAL_DLQ")):
        if code[env] in by_name:
            found[role] = by_name[code[env]]
        else:
            problems.append(
                f"no aws_sqs_queue is named `{code[env]}` by default ({env}'s default, {code[env + '@']}); "
                f"names found: {sorted(map(str, by_name))}"
            )
    extra = sorted(set(queues) - set(found.values()))
    if extra:
        problems.append(f"aws_sqs_queue {', '.join(extra)}: a queue the code does not use")
    if len(found) < 2:
        return found
    main = queues[found[MAIN]]
    expect(
        problems,
        f"aws_sqs_queue.{found[MAIN]}.visibility_timeout_seconds",
        config.value(main.get("visibility_timeout_seconds")),
        code["VISIBILITY_TIMEOUT_SECS"],
        f"VISIBILITY_TIMEOUT_SECS's default ({code['VISIBILITY_TIMEOUT_SECS@']})",
    )
    redrive = config.value(main.get("redrive_policy"))
    if not isinstance(redrive, dict):
        problems.append(f"aws_sqs_queue.{found[MAIN]} has no redrive policy the check can read (got {redrive!r})")
    else:
        target = config.reference(redrive.get("deadLetterTargetArn"))
        if target != ("aws_sqs_queue", found[DLQ], "arn"):
            problems.append(
                f"aws_sqs_queue.{found[MAIN]}'s redrive policy targets {redrive.get('deadLetterTargetArn')}, not aws_sqs_queue.{found[DLQ]}.arn"
            )
        count = redrive.get("maxReceiveCount")
        count = int(count) if isinstance(count, str) and count.isdigit() else count
        expect(
            problems,
            f"aws_sqs_queue.{found[MAIN]} redrive maxReceiveCount",
            count,
            code["MAX_RECEIVE_COUNT"],
            f"MAX_RECEIVE_COUNT's default ({code['MAX_RECEIVE_COUNT@']})",
        )
    retention = {}
    for role, name in found.items():
        body = queues[name]
        where = f"aws_sqs_queue.{name}"
        if config.value(body.get("sqs_managed_sse_enabled")) is not True:
            problems.append(
                f"{where}: sqs_managed_sse_enabled must be true (server-side encryption with SQS-managed keys)"
            )
        if "kms_master_key_id" in body:
            problems.append(
                f"{where}: a KMS key needs kms:GenerateDataKey/kms:Decrypt in the policies, which this check does not model"
            )
        if config.value(body.get("fifo_queue", False)) is not False:
            problems.append(f"{where}: must be a standard queue (the code sends no MessageGroupId)")
        size = config.value(body.get("max_message_size"))
        if not isinstance(size, int) or size < code["MAX_BATCH_BYTES"]:
            problems.append(
                f"{where}.max_message_size is {size!r}; the code sends messages of up to {code['MAX_BATCH_BYTES']} bytes (MAX_BATCH_BYTES)"
            )
        retention[role] = config.value(body.get("message_retention_seconds"))
        if not isinstance(retention[role], int):
            problems.append(f"{where}.message_retention_seconds must be set (got {retention[role]!r})")
    if all(isinstance(r, int) for r in retention.values()) and retention[DLQ] < retention[MAIN]:
        problems.append(
            f"the DLQ keeps messages {retention[DLQ]} s, less than the main queue's {retention[MAIN]} s: moved messages keep their enqueue time and would expire there unseen"
        )
    code_region = code["AWS_REGION"]
    expect(
        problems,
        "variable aws_region default",
        config.value("${var.aws_region}"),
        code_region,
        f"AWS_REGION's default ({code['AWS_REGION@']})",
    )
    return found


def expect(problems: list[str], what: str, got, want, source: str) -> None:
    if got != want:
        problems.append(f"{what} is {got!r}, but the code expects {want!r}: {source}")


_DOC_REF = re.compile(r"^\$\{\s*data\.aws_iam_policy_document\.(\w+)(\[[^\]]*\])?\.json\s*\}$")


def policy_grants(
    config: tf_config.Config, queues: dict[str, str], problems: list[str]
) -> dict[str, dict[str, set[str]]]:
    """role -> queue -> IAM actions its aws_iam_policy grants (Allow statements)."""
    for kind in (
        "aws_iam_role_policy",
        "aws_iam_user_policy",
        "aws_iam_group_policy",
        "aws_iam_user_policy_attachment",
        "aws_iam_group_policy_attachment",
    ):
        for name in config.of_type(kind):
            problems.append(f"{kind}.{name}: grants outside the checked aws_iam_policy documents")
    for name, body in config.of_type("aws_iam_role").items():
        if "inline_policy" in body:
            problems.append(f"aws_iam_role.{name}: an inline policy is not checked; use iam.tf's policies")
    documents: dict[str, str] = {}
    for name, body in config.of_type("aws_iam_policy").items():
        keys = config.value(body["for_each"]) if "for_each" in body else {name: None}
        if not isinstance(keys, dict):
            problems.append(f"aws_iam_policy.{name}: cannot read its for_each {body.get('for_each')!r}")
            continue
        for key in keys:
            ref = _DOC_REF.match(str(config.value(body.get("policy"), each_key=key if "for_each" in body else None)))
            if not ref or ref.group(2):
                problems.append(
                    f"aws_iam_policy.{name}[{key}]: its policy is not an aws_iam_policy_document the check can read"
                )
                continue
            documents[key] = ref.group(1)
    arns = {("aws_sqs_queue", resource, "arn"): role for role, resource in queues.items()}
    grants: dict[str, dict[str, set[str]]] = {}
    for role, doc_name in documents.items():
        doc = config.data.get(("aws_iam_policy_document", doc_name))
        if doc is None:
            problems.append(f"{role}: data.aws_iam_policy_document.{doc_name} does not exist")
            continue
        grants[role] = {MAIN: set(), DLQ: set()}
        for st in doc.get("statement", []):
            where = f"data.aws_iam_policy_document.{doc_name} statement {st.get('sid', '?')}"
            if config.value(st.get("effect", "Allow")) == "Deny":
                continue  # a Deny only narrows
            for forbidden in ("not_actions", "not_resources", "principals", "not_principals"):
                if forbidden in st:
                    problems.append(f"{where}: `{forbidden}` in an Allow statement grants more than it names")
            actions = config.value(st.get("actions", []))
            targets = []
            for resource in config.value(st.get("resources", [])):
                if config.reference(resource) in arns:
                    targets.append(arns[config.reference(resource)])
                else:
                    problems.append(f"{where}: resource {resource!r} is not one of the two queue ARNs")
            for action in actions:
                canonical = IAM_ACTIONS.get(str(action).lower())
                if "*" in str(action) or "?" in str(action):
                    problems.append(f"{where}: wildcard action {action!r}")
                elif canonical is None:
                    problems.append(
                        f"{where}: {action!r} is no SQS action the code could need (batch calls are authorised by the single action, e.g. sqs:SendMessage)"
                    )
                else:
                    for queue in targets:
                        grants[role][queue].add(canonical)
    for name, body in config.of_type("aws_sqs_queue_policy").items():
        for key in config.value(body["for_each"]) if "for_each" in body else {None: None}:
            ref = _DOC_REF.match(str(config.value(body.get("policy"), each_key=key)))
            doc = config.data.get(("aws_iam_policy_document", ref.group(1))) if ref else None
            if doc is None or any(config.value(st.get("effect", "Allow")) != "Deny" for st in doc.get("statement", [])):
                problems.append(
                    f"aws_sqs_queue_policy.{name}: a queue policy may only deny; grants belong in iam.tf's identity policies"
                )
    return grants


def compare(needs: dict, grants: dict, problems: list[str]) -> list[str]:
    """Problems where a role's grants differ from its code's needs; returns the notes on what is
    deliberately not granted."""
    notes = []
    for role in sorted(set(needs) - set(grants)):
        problems.append(f"{role}: no aws_iam_policy for it (its code calls {describe(needs[role])})")
    for role in sorted(set(grants) - set(needs)):
        problems.append(
            f"aws_iam_policy for `{role}`: no binary of that name; the roles are {', '.join(sorted(needs))}"
        )
    used_exemptions = set()
    for role in sorted(set(needs) & set(grants)):
        for queue in (MAIN, DLQ):
            wanted = needs[role].get(queue, {})
            granted = grants[role][queue]
            for action in sorted(set(wanted) - granted):
                if (role, queue, action) in NOT_GRANTED:
                    used_exemptions.add((role, queue, action))
                    continue
                sites = wanted[action]
                problems.append(
                    f"{role}: the code calls {action} on the {QUEUE_WORDS[queue]} (at {'; '.join(sites[:2])}"
                    f"{'; …' if len(sites) > 2 else ''}) but iam.tf does not grant it"
                )
            for action in sorted(granted - set(wanted)):
                problems.append(
                    f"{role}: iam.tf grants {action} on the {QUEUE_WORDS[queue]}, which its code never calls"
                )
            for action in sorted(granted & set(wanted)):
                if (role, queue, action) in NOT_GRANTED:
                    problems.append(
                        f"{role}: iam.tf grants {action} on the {QUEUE_WORDS[queue]}, deliberately left out: {NOT_GRANTED[(role, queue, action)]}"
                    )
    for stale in sorted(set(NOT_GRANTED) - used_exemptions):
        role, queue, action = stale
        if action not in grants.get(role, {}).get(queue, set()):
            problems.append(f"NOT_GRANTED entry {stale} no longer matches a call in the code: remove it")
    for (role, queue, action), why in sorted(NOT_GRANTED.items()):
        notes.append(f"{role} is not granted {action} on the {QUEUE_WORDS[queue]}: {why}")
    return notes


def describe(by_queue: dict) -> str:
    return "; ".join(
        f"{QUEUE_WORDS[q]}: {' '.join(sorted(a.split(':')[1] for a in by_queue[q]))}"
        for q in (MAIN, DLQ)
        if by_queue.get(q)
    )


def check_documented(config: tf_config.Config, problems: list[str]) -> None:
    for kind, items in (("variable", config.variables), ("output", config.outputs)):
        for name, body in items.items():
            if not str(body.get("description", "")).strip():
                problems.append(f"{kind} {name} has no description")
    providers = [
        p for t in config.terraform for block in t.get("required_providers", []) for p in [block.get("aws")] if p
    ]
    if not providers or not isinstance(providers[0], dict) or not providers[0].get("version"):
        problems.append("terraform.required_providers.aws has no version constraint")
    if not any(t.get("required_version") for t in config.terraform):
        problems.append("terraform.required_version is not set")
    for name in config.files:
        text = (config.directory / name).read_text(encoding="utf-8")
        for m in re.finditer(r"checkov:skip=([^\s:]*)(:?)(.*)", text):
            if not (m.group(1) and m.group(2) and m.group(3).strip()):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{name}:{line}: a checkov skip needs its reason: #checkov:skip=<CHECK_ID>:<why>")


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".").resolve()
    problems: list[str] = []
    try:
        needs = Scanner(root).needs()
        code = code_defaults(root)
        config = tf_config.load(root / "infra" / "terraform")
    except (ScanError, tf_config.ConfigError, OSError) as e:
        print(f"check-terraform: {e}")
        return 1
    queues = check_queues(config, code, problems)
    grants = policy_grants(config, queues, problems) if len(queues) == 2 else {}
    notes = compare(needs, grants, problems) if grants else []
    check_documented(config, problems)
    if problems:
        for problem in problems:
            print(f"check-terraform: {problem}")
        print(f"check-terraform: {len(problems)} mismatch(es) between infra/terraform and the code")
        return 1
    main_q = config.of_type("aws_sqs_queue")[queues[MAIN]]
    dlq_q = config.of_type("aws_sqs_queue")[queues[DLQ]]
    print(f"terraform: {len(config.files)} files parse ({', '.join(config.files)})")
    print(
        f"  queue {code['ACCRUAL_QUEUE']}: visibility {code['VISIBILITY_TIMEOUT_SECS']} s, "
        f"maxReceiveCount {code['MAX_RECEIVE_COUNT']} -> {code['ACCRUAL_DLQ']}, retention "
        f"{config.value(main_q['message_retention_seconds'])} s (DLQ {config.value(dlq_q['message_retention_seconds'])} s), "
        f"SQS-managed SSE on both, messages up to {config.value(main_q['max_message_size'])} bytes"
    )
    width = max(map(len, grants))
    for role in sorted(grants):
        print(f"  {role:<{width}}  {describe(grants[role])}")
    for note in notes:
        print(f"  by design: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
