"""Property-based tests of everything that parses input: references, rule patterns, configuration.

No input may make these raise anything but the documented error (`InvalidArgument` for references,
`ConfigError` for configuration files, pydantic's `ValidationError` for a section model); what they
accept must satisfy the grammar they implement, checked against an independent oracle written here
from distribution/reference's published grammar.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from imaged.config.loader import ConfigError, load_text
from imaged.errors import InvalidArgument
from imaged.oci.digest import validate_digest
from imaged.registry.reference import Reference, parse
from imaged.verify.config import Rule, VerificationConfig, config_warnings
from imaged.verify.matching import Glob, normalize_pattern, pattern_problem
from tests.reliability.strategies import (
    SUPPORTED_DIGEST,
    any_refs,
    digests,
    near_refs,
    oracle_accepts,
    valid_refs,
)

PROFILE = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- references ----------------------------------------------------------------------------------


@PROFILE
@given(any_refs)
@example("nginx:tést")
@example("a/b:v1٣")
@example("x" * 5000)
@example("localhost/" + "a" * 260)
def test_parse_raises_only_invalid_argument_and_agrees_with_the_grammar(ref: str) -> None:
    try:
        parsed = parse(ref)
    except InvalidArgument as e:
        assert e.message and len(e.message) < 6000
        assert not oracle_accepts(ref), f"{ref!r} is a valid docker reference but was refused: {e.message}"
        return
    assert oracle_accepts(ref), f"{ref!r} is not a valid docker reference but parsed as {parsed}"
    _check_normal_form(parsed)


def _check_normal_form(r: Reference) -> None:
    assert r.domain and r.path and (r.tag or r.digest)
    assert r.domain not in ("index.docker.io", "registry-1.docker.io")
    if r.domain == "docker.io":
        assert "/" in r.path
    assert r.tag is None or r.tag.isascii()
    # The normal form is a fixed point: printing and parsing again gives the same reference.
    assert parse(str(r)) == r
    if r.digest:
        assert parse(r.pinned()) == Reference(r.domain, r.path, None, r.digest)


@PROFILE
@given(valid_refs)
def test_grammar_valid_references_parse(ref: str) -> None:
    _check_normal_form(parse(ref))


@PROFILE
@given(st.one_of(digests, digests.map(lambda d: d + "\n"), st.text(max_size=140), near_refs()))
def test_validate_digest_accepts_exactly_sha256_and_sha512(digest: str) -> None:
    try:
        assert validate_digest(digest) == digest
    except InvalidArgument:
        assert not SUPPORTED_DIGEST.fullmatch(digest)
        return
    assert SUPPORTED_DIGEST.fullmatch(digest), repr(digest)


def test_parse_is_fast_on_huge_input() -> None:
    start = time.monotonic()
    for ref in ("a" * 1_000_000, "a/" * 100_000 + "b", "a:" + "b" * 100_000, "a@sha256:" + "0" * 100_000):
        with pytest.raises(InvalidArgument):
            parse(ref)
    assert time.monotonic() - start < 1.0


# -- rule patterns -------------------------------------------------------------------------------

pattern_chars = st.sampled_from([*list("ab.-_/:*[]"), "docker.io/", "index.docker.io/", "library/", "**"])
patterns = st.one_of(
    st.lists(pattern_chars, min_size=1, max_size=10).map("".join),
    st.text(max_size=40),
)


pattern_component = st.lists(
    st.sampled_from([*list("ab0.-_*"), "**", "library"]), min_size=1, max_size=5
).map("".join)
valid_patterns = st.one_of(
    st.lists(pattern_component, min_size=1, max_size=3).map("/".join),
    st.tuples(
        st.sampled_from(["docker.io", "index.docker.io", "a.b:5000", "*", "localhost", "A.B"]),
        st.lists(pattern_component, min_size=1, max_size=2),
    ).map(lambda t: "/".join([t[0], *t[1]])),
).filter(lambda p: pattern_problem(p) is None)


@PROFILE
@given(patterns, valid_refs)
def test_pattern_checks_never_raise_and_matching_is_total(pattern: str, ref: str) -> None:
    problem = pattern_problem(pattern)
    if problem is not None:
        assert isinstance(problem, str) and problem
        with pytest.raises(ValidationError):
            Rule.model_validate({"image": pattern, "skip": True})
        return
    glob = Glob.compile(pattern)
    assert glob.normalized == normalize_pattern(pattern)
    repository = parse(ref).repository
    assert isinstance(glob.matches(repository), bool)
    # A glob matches what it was written from (a plain name or the name with its stars filled in).
    if "*" not in pattern and ":" not in pattern.rpartition("/")[2]:
        try:
            named = parse(pattern)
        except InvalidArgument:
            return
        assert glob.matches(named.repository), (pattern, named.repository)


@settings(PROFILE, max_examples=100)
@given(valid_patterns, valid_patterns, st.lists(valid_refs, min_size=1, max_size=8))
def test_covers_is_sound(a: str, b: str, refs: list[str]) -> None:
    """`covers` drives the 'rule never used' warning: it must never claim coverage that is false."""
    ga, gb = Glob.compile(a), Glob.compile(b)
    if not ga.covers(gb):
        return
    for ref in refs:
        repository = parse(ref).repository
        if gb.matches(repository):
            assert ga.matches(repository), f"{a!r} said to cover {b!r} but misses {repository}"
    # Names `b` matches by construction (its stars replaced by text) are matched by `a` too.
    for fill in ("", "x", "a/b", "docker.io/library/x"):
        name = gb.normalized.replace("*", fill)
        if gb.matches(name):
            assert ga.matches(name), (a, b, name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
rule_keys = st.sampled_from(
    [
        "image",
        "keyless",
        "publicKey",
        "public_key",
        "skip",
        "deny",
        "issuer",
        "subject",
        "issuerRegex",
        "subjectRegex",
        "certificate",
        "other",
    ]
)


@st.composite
def rule_docs(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {}
    for key in draw(st.lists(rule_keys, max_size=5)):
        if key in ("keyless",):
            doc[key] = draw(
                st.dictionaries(
                    st.sampled_from(["issuer", "subject", "issuerRegex", "subjectRegex", "x"]),
                    st.one_of(st.text(max_size=20), st.sampled_from(["(", "^a$", "[", "a{99999}", "(?P<x"])),
                    max_size=4,
                )
            )
        elif key in ("publicKey", "public_key"):
            doc[key] = {
                "certificate": draw(
                    st.one_of(
                        st.text(max_size=40),
                        st.sampled_from(["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]),
                    )
                )
            }
        else:
            doc[key] = draw(json_values)
    return doc


@settings(PROFILE, max_examples=100)
@given(st.lists(rule_docs(), max_size=4), json_values, json_values)
def test_verification_config_raises_only_validation_errors(
    rules: list[object], no_match: object, cache: object
) -> None:
    try:
        cfg = VerificationConfig.model_validate({"rules": rules, "noMatch": no_match, "cache": cache})
    except ValidationError:
        return
    assert all(isinstance(w, str) for w in config_warnings(cfg))


# -- configuration files -------------------------------------------------------------------------

SECTIONS = [
    "listen",
    "containerd",
    "pull",
    "registries",
    "verification",
    "log",
    "metrics",
    "shutdown",
    "bogus",
]


@st.composite
def config_docs(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    doc: dict[str, object] = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS), max_size=4)):
        doc[section] = draw(
            st.one_of(json_values, st.dictionaries(st.text(max_size=10), json_values, max_size=3))
        )
    return doc


yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "listen:",
                "  admin:",
                "    mode: ",
                "'0777'",
                "0o999",
                "registries:",
                "  hosts:",
                "    'a b':",
                "  retries: {attempts: -1}",
                "verification:",
                "  rules:",
                "    - image: '*'",
                "      deny: true",
                "      skip: yes",
                "&a [*a]",
                "!!python/object:os.system",
                "- ",
                ": ",
                "{",
                "}",
                "[",
                "]",
                "\t",
                "\x00",
                "%YAML 1.1",
                "---",
                "...",
                "timeouts: {read: .inf}",
                "grace_seconds: nan",
            ]
        ),
        max_size=12,
    ).map("\n".join),
)


@PROFILE
@given(yaml_texts)
@example("a: &a [*a]")
@example("x: !!python/object/apply:os.system ['true']")
def test_load_text_raises_only_config_error(text: str) -> None:
    try:
        load_text(text, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml")


@PROFILE
@given(config_docs())
def test_structured_configs_raise_only_config_error(doc: object) -> None:
    import yaml

    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        load_text(text, "fuzz.yaml")
    except ConfigError:
        pass


def test_yaml_bombs_are_refused_quickly() -> None:
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]\n" for i in range(1, 10)
    )
    for text in (
        laughs + "verification: {rules: *a9}\n",
        laughs + "registries: {hosts: {x: {mirrors: *a9}}}\n",
        "listen: " + "[" * 5000 + "]" * 5000 + "\n",
        "listen: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    ):
        start = time.monotonic()
        with pytest.raises(ConfigError):
            load_text(text, "bomb.yaml")
        assert time.monotonic() - start < 5, text[:60]
