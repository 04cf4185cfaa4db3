"""`imagectl policy explain`: which rule decides for an image and what it will demand, offline.

Only the configuration is read: patterns are matched as the daemon matches them (normalized
reference, canonical host), and the decision is described, not made (no registry is asked).
"""

from __future__ import annotations

from imaged.registry.reference import parse
from imaged.verify.config import Rule, VerificationConfig
from imaged.verify.matching import Glob


def _keyless(name: str, rule: Rule, index: int) -> str:
    k = rule.keyless_authorities()[index][1]
    parts = []
    for label, exact, regex in (
        ("issuer", k.issuer, k.issuer_regex),
        ("subject", k.subject, k.subject_regex),
    ):
        if exact:
            parts.append(f"{label} = {exact!r}")
        if regex:
            parts.append(f"{label} ~ /{regex}/")
    for claim, value in k.claims.items():
        parts.append(f"{claim[:-5]} ~ /{value}/" if claim.endswith("Regex") else f"{claim} = {value!r}")
    label = f"{k.name} ({name})" if k.name else name
    return f"{label}: keyless, " + ", ".join(parts)


def _key(name: str, rule: Rule, index: int) -> str:
    from imaged.verify.keys import describe, load_public_key

    p = rule.key_authorities()[index][1]
    label = f"{p.name} ({name})" if p.name else name
    return f"{label}: {describe(load_public_key(p.certificate or ''))}"


def explain(config: VerificationConfig, image: str) -> list[str]:
    """Lines saying how the policy treats `image`. Raises InvalidArgument for a bad reference."""
    ref = parse(image)
    lines = [f"image:      {image}", f"repository: {ref.repository}"]
    chosen: tuple[int, Rule] | None = None
    skipped: list[str] = []
    for i, rule in enumerate(config.rules):
        glob = Glob.compile(rule.image)
        if glob.matches(ref.repository):
            chosen = (i, rule)
            shown = f" (as {glob.normalized!r})" if glob.normalized != rule.image else ""
            lines.append(f"rule:       rules[{i}] {rule.image!r}{shown} matches; the first match decides")
            break
        skipped.append(f"rules[{i}] {rule.image!r} (as {glob.normalized!r})")
    if skipped:
        lines.append("not matched before it: " + ", ".join(skipped))
    if chosen is None:
        mode = config.mode
        lines.append("rule:       none matches")
        if config.no_match == "deny":
            lines.append(
                "verdict:    allowed with a warning (noMatch is deny, mode is warn)"
                if mode == "warn"
                else "verdict:    refused, PERMISSION_DENIED (noMatch: deny)"
            )
        else:
            lines.append('verdict:    allowed unverified, verified=false "no matched rule" (noMatch: allow)')
        return lines
    i, rule = chosen
    mode = rule.mode or config.mode
    lines.append(f"mode:       {mode}" + (" (the rule's)" if rule.mode else " (verification.mode)"))
    if rule.deny:
        lines.append("action:     deny")
        lines.append(
            "verdict:    allowed with a warning (deny rule in warn mode)"
            if mode == "warn"
            else "verdict:    refused, PERMISSION_DENIED"
        )
        return lines
    if rule.skip:
        lines.append("action:     skip")
        lines.append("verdict:    allowed unverified, verified=false (skip)")
        return lines
    keyless, keys = rule.keyless_authorities(), rule.key_authorities()
    n = len(keyless) + len(keys)
    need = "any one" if rule.threshold == 1 else f"{rule.threshold} distinct ones, each by its own signature"
    lines.append(f"action:     verify: {n} authorit{'y' if n == 1 else 'ies'}, {need}")
    lines += [f"  - {_keyless(name, rule, j)}" for j, (name, _) in enumerate(keyless)]
    lines += [f"  - {_key(name, rule, j)}" for j, (name, _) in enumerate(keys)]
    if rule.attestations:
        lines.append("attestations, each signed by one of these authorities, about the image's digest:")
        lines += [
            f"  - {a.predicate_type} where {a.policy}"
            + (f" (signed by {', '.join(a.authorities)} only)" if a.authorities else "")
            for a in rule.attestations
        ]
        if not rule.check_docker_reference:
            lines.append(
                "  (a satisfied one also counts as its signer's signature: attestations alone may verify)"
            )
    lines.append(
        "verdict:    verified when all of this holds; otherwise "
        + ("allowed with a warning (warn mode)" if mode == "warn" else "refused, PERMISSION_DENIED")
    )
    lines.append(
        "signatures are looked for as: OCI referrers (API or sha256-<hex> tag), then sha256-<hex>.sig"
    )
    return lines
