"""Hypothesis strategies for references, and an independent oracle of docker's reference grammar."""

from __future__ import annotations

import re

from hypothesis import strategies as st

# -- an independent oracle: distribution/reference's grammar (ASCII classes, as in Go's RE2) -----------

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
ORACLE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
SUPPORTED_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


def oracle_accepts(ref: str) -> bool:
    """Whether docker would parse `ref`, restricted to what imaged supports on purpose (digests
    sha256/sha512 in lowercase hex; no 64-hex image ids as names; names of at most 255 characters
    once normalized; a registry port between 1 and 65535, which docker's grammar does not check)."""
    m = ORACLE.fullmatch(ref)
    if m is None:
        return False
    port = re.search(r":([0-9]+)$", m.group("domain") or "")
    if port and not 0 < int(port.group(1)) < 65536:
        return False
    if m.group("digest") and not SUPPORTED_DIGEST.fullmatch(m.group("digest")):
        return False
    if re.fullmatch(r"[a-f0-9]{64}", m.group("name")):
        return False
    # docker: a first component is a registry host only if it has '.', ':', is localhost or has
    # upper case; otherwise the whole name is a Docker Hub path (which must then be lowercase).
    first, sep, _rest = m.group("name").partition("/")
    hosted = bool(sep) and (any(c in first for c in ".:") or first == "localhost" or first != first.lower())
    if hosted and not re.fullmatch(_DOMAIN, first):
        return False  # docker takes it as a host too (`0.0_0/x`), then fails on it
    if not hosted and m.group("name") != m.group("name").lower():
        return False
    normalized = m.group("name") if hosted else f"docker.io/{m.group('name')}"
    if not hosted and "/" not in m.group("name"):
        normalized = f"docker.io/library/{m.group('name')}"
    return len(normalized) <= 255


# -- strategies ----------------------------------------------------------------------------------

alnum = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
path_component = st.builds(
    lambda parts, seps: parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=False)),
    st.lists(alnum, min_size=1, max_size=3),
    st.lists(st.sampled_from([".", "_", "__", "-", "--"]), min_size=2, max_size=2),
)
domains = st.one_of(
    st.sampled_from(
        [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "ghcr.io",
            "Registry.Example.com:443",
            "a-b.c",
        ]
    ),
    st.from_regex(r"[a-z0-9]{1,5}(\.[a-z0-9]{1,5}){1,2}(:[0-9]{1,5})?", fullmatch=True),
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digests = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.binary(min_size=64, max_size=64).map(lambda b: "sha512:" + b.hex()),
)


@st.composite
def grammar_refs(draw: st.DrawFn) -> str:
    path = "/".join(draw(st.lists(path_component, min_size=1, max_size=3)))
    ref = path
    if draw(st.booleans()):
        ref = f"{draw(domains)}/{path}"
    if draw(st.booleans()):
        ref += ":" + draw(tags)
    if draw(st.booleans()):
        ref += "@" + draw(digests)
    return ref


valid_refs = grammar_refs().filter(oracle_accepts)

NOISE = st.sampled_from(
    [*list(":/@._-+ \t\n\x00AZaz09é٣\uff3a\u200b%?#[]*\\\"'"), "sha256:", "::", "//", "@@"]
)


@st.composite
def near_refs(draw: st.DrawFn) -> str:
    """A valid reference with a few characters inserted, deleted or replaced: near the border."""
    s = list(draw(grammar_refs()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        i = draw(st.integers(0, max(len(s) - 1, 0)))
        if op == "insert":
            s.insert(i, draw(NOISE))
        elif s and op == "delete":
            del s[i]
        elif s:
            s[i] = draw(NOISE)
    return "".join(s)


any_refs = st.one_of(
    grammar_refs(), near_refs(), st.text(max_size=80), st.text(alphabet=st.characters(), max_size=300)
)
