"""RFC 5321 command grammar: MAIL/RCPT arguments, mailboxes, ESMTP parameters, HELO arguments."""

from __future__ import annotations

import pytest

from chainmail.protocol.grammar import (
    Address, GrammarError, PathArgument, is_valid_domain, is_valid_helo, parse_mail_argument,
    parse_mailbox, parse_parameters, parse_rcpt_argument,
)


def kind_of(func, *args, **kwargs) -> str:
    with pytest.raises(GrammarError) as info:
        func(*args, **kwargs)
    return info.value.kind


# -- MAIL FROM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arg", ["FROM:<>", "FROM:<@>", "from:<>", "FROM: <>", "FROM:<@>   "])
def test_null_sender(arg):
    assert parse_mail_argument(arg) == PathArgument(None, {})


def test_null_sender_with_parameters():
    assert parse_mail_argument("FROM:<> SIZE=0 BODY=8BITMIME") == \
        PathArgument(None, {"SIZE": "0", "BODY": "8BITMIME"})


@pytest.mark.parametrize("arg,local,domain", [
    ("FROM:<a@b.example>", "a", "b.example"),
    ("from:<a@b.example>", "a", "b.example"),
    ("From:<Mixed.Case@Example.ORG>", "Mixed.Case", "Example.ORG"),
    ("FROM: <a@b.example>", "a", "b.example"),          # space after the colon (James allows)
    ("FROM:   <a@b.example>", "a", "b.example"),
    ("FROM:<first.last+tag@sub.b.example>", "first.last+tag", "sub.b.example"),
    ("FROM:<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~", "x.example"),
    ("FROM:<a@b>", "a", "b"),
    ("FROM:<a@1.2.3.4>", "a", "1.2.3.4"),                # syntactically a Domain
])
def test_mail_sender(arg, local, domain):
    assert parse_mail_argument(arg) == PathArgument(Address(local, domain), {})


def test_parameters_are_upper_cased():
    parsed = parse_mail_argument("FROM:<a@b.example> size=1024 Body=8BITMIME smtputf8 ret=HDRS")
    assert parsed.parameters == {"SIZE": "1024", "BODY": "8BITMIME", "SMTPUTF8": None,
                                 "RET": "HDRS"}
    assert list(parsed.parameters) == ["SIZE", "BODY", "SMTPUTF8", "RET"]


def test_parameter_values_keep_their_case_and_may_hold_angle_brackets():
    parsed = parse_mail_argument("FROM:<a@b.example> ENVID=QQ314159 AUTH=<>")
    assert parsed.parameters == {"ENVID": "QQ314159", "AUTH": "<>"}


def test_repeated_spaces_between_parameters_are_tolerated():
    assert parse_mail_argument("FROM:<a@b.example>  SIZE=1   BODY=7BIT").parameters == \
        {"SIZE": "1", "BODY": "7BIT"}


@pytest.mark.parametrize("arg", [
    "FROM:<a@b.example> SIZE=1 size=2",
    "FROM:<a@b.example> SMTPUTF8 SMTPUTF8",
    "FROM:<a@b.example> BODY=7BIT body",
])
def test_duplicate_parameters(arg):
    assert kind_of(parse_mail_argument, arg) == "parameters"


@pytest.mark.parametrize("arg", [
    "FROM:<a@b.example>SIZE=1",          # parameters must follow the path after a space
    "FROM:<a@b.example> SIZE=",          # empty value
    "FROM:<a@b.example> =1",             # empty keyword
    "FROM:<a@b.example> -X=1",           # keyword must start with a letter or digit
    "FROM:<a@b.example> S_Z=1",
    "FROM:<a@b.example> SIZE=1=2",       # '=' not allowed in a value
    "FROM:<a@b.example> X=\x01",
    "FROM:<a@b.example>>",
])
def test_bad_parameters(arg):
    assert kind_of(parse_mail_argument, arg) == "parameters"


@pytest.mark.parametrize("arg", [None, "", "<a@b.example>", "FROM<a@b.example>",
                                 "FROM <a@b.example>", "TO:<a@b.example>", "FRO:<a@b>",
                                 "FROMX:<a@b.example>"])
def test_missing_from_is_usage(arg):
    assert kind_of(parse_mail_argument, arg) == "usage"


@pytest.mark.parametrize("arg", ["FROM:a@b.example", "FROM:a@b.example SIZE=1", "FROM:<a@b.example",
                                 "FROM:", "FROM: "])
def test_brackets_enforced(arg):
    assert kind_of(parse_mail_argument, arg) == "brackets"


def test_brackets_not_enforced():
    assert parse_mail_argument("FROM:a@b.example", brackets_required=False) == \
        PathArgument(Address("a", "b.example"), {})
    assert parse_mail_argument("FROM:a@b.example SIZE=10", brackets_required=False) == \
        PathArgument(Address("a", "b.example"), {"SIZE": "10"})
    # brackets still accepted when not required
    assert parse_mail_argument("FROM:<a@b.example>", brackets_required=False) == \
        PathArgument(Address("a", "b.example"), {})
    # as James: an empty path after FROM: is the null sender when brackets are optional
    assert parse_mail_argument("FROM:", brackets_required=False) == PathArgument(None, {})


def test_james_bracket_enforcement_examples():
    # James checklist item 23.
    assert kind_of(parse_mail_argument, "from: test@localhost") == "brackets"
    assert parse_mail_argument("from: <test@localhost>").address == Address("test", "localhost")
    assert kind_of(parse_rcpt_argument, "to: mail@sample.com") == "brackets"
    assert parse_rcpt_argument("to: <mail@sample.com>").address == Address("mail", "sample.com")
    assert parse_mail_argument("from: test@localhost", False).address == \
        Address("test", "localhost")
    assert parse_rcpt_argument("to: mail@sample.com", False).address == \
        Address("mail", "sample.com")


# -- quoted local parts, literals, source routes -----------------------------------------------------

@pytest.mark.parametrize("arg,local,params", [
    ('FROM:<"john doe"@b.example>', '"john doe"', {}),
    ('FROM:<"a>b"@b.example> SIZE=5', '"a>b"', {"SIZE": "5"}),
    ('FROM:<"a> b c"@b.example> SIZE=5', '"a> b c"', {"SIZE": "5"}),
    ('FROM:<"a@b"@b.example>', '"a@b"', {}),
    ('FROM:<"a\\"b"@b.example>', '"a\\"b"', {}),
    ('FROM:<"a\\\\"@b.example>', '"a\\\\"', {}),
    ('FROM:<"a\\>"@b.example> BODY=7BIT', '"a\\>"', {"BODY": "7BIT"}),
    ('FROM:<""@b.example>', '""', {}),
])
def test_quoted_local_parts(arg, local, params):
    assert parse_mail_argument(arg) == PathArgument(Address(local, "b.example"), params)


@pytest.mark.parametrize("arg", ['FROM:<"unterminated@b.example>', 'FROM:<"a"b"@b.example>'])
def test_bad_quoted_local_parts(arg):
    assert kind_of(parse_mail_argument, arg) in ("address", "brackets")


@pytest.mark.parametrize("domain", [
    "[192.0.2.1]", "[127.0.0.1]", "[IPv6:2001:db8::1]", "[ipv6:2001:DB8::1]",
    "[IPv6:::ffff:172.16.149.220]", "[IPv6:fe80::1ff:fe23:4567:890a]",
    "[x-tag:some-content]", "[tag:a:b]",
])
def test_address_literals(domain):
    assert parse_rcpt_argument(f"TO:<user@{domain}>").address == Address("user", domain)
    assert is_valid_domain(domain)


@pytest.mark.parametrize("domain", [
    "[]", "[1.2.3]", "[256.1.1.1]", "[1.2.3.4.5]", "[IPv6:1.2.3.4]", "[IPv6:zz::1]", "[IPv6:]",
    "[tag:]", "[:x]", "[-:x]", "[tag:a b]", "[tag:a[b]", "[192.0.2.1", "192.0.2.1]",
])
def test_bad_address_literals(domain):
    assert kind_of(parse_rcpt_argument, f"TO:<user@{domain}>") in ("address", "parameters")
    assert not is_valid_domain(domain)


@pytest.mark.parametrize("arg,address", [
    ("TO:<@a.example,@b.example:u@d.example>", Address("u", "d.example")),
    ("TO:<@a.example:u@d.example>", Address("u", "d.example")),
    ("TO:<@[192.0.2.1]:u@d.example>", Address("u", "d.example")),
])
def test_source_routes_accepted_and_stripped(arg, address):
    assert parse_rcpt_argument(arg).address == address
    assert parse_mail_argument("FROM" + arg[2:]).address == address


@pytest.mark.parametrize("arg", ["TO:<@a.example,b.example:u@d.example>", "TO:<@:u@d.example>",
                                 "TO:<@a..b:u@d.example>", "TO:<@a.example u@d.example>",
                                 "TO:<@a.example,@b.example:>"])
def test_malformed_source_routes(arg):
    assert kind_of(parse_rcpt_argument, arg) == "address"


# -- bad addresses -----------------------------------------------------------------------------------

BAD_MAILBOXES = [
    "to..user@x.example", ".a@x.example", "a.@x.example", "a@-x.example", "a@x-.example",
    "a@x..y", "a@.x", "a@x.", "a@", "@x.example", "a b@x.example", "a\\,b@x.example",
    "a,b@x.example", "a(b)@x.example", "a@x_y.example", "a@x y", "a@@x.example",
    "a" * 65 + "@x.example", "a@" + "b" * 250 + ".example",
]


@pytest.mark.parametrize("mailbox", BAD_MAILBOXES)
def test_bad_addresses_are_address_errors(mailbox):
    assert kind_of(parse_rcpt_argument, f"TO:<{mailbox}>") == "address"
    assert kind_of(parse_mail_argument, f"FROM:<{mailbox}>") == "address"


def test_james_to_double_dot_user():
    # James checklist item 28: RCPT TO:<to..user@remote> -> 553 (address error).
    assert kind_of(parse_rcpt_argument, "TO:<to..user@remote>") == "address"


def test_length_limits():
    assert parse_rcpt_argument("TO:<" + "a" * 64 + "@x.example>").address.local == "a" * 64
    assert kind_of(parse_rcpt_argument, "TO:<" + "a" * 65 + "@x.example>") == "address"
    domain = ".".join(["b" * 63] * 4)[:255]
    assert len(domain) == 255 and not domain.endswith(".")
    assert parse_rcpt_argument(f"TO:<a@{domain}>").address.domain == domain
    assert kind_of(parse_rcpt_argument, f"TO:<a@{domain}c>") == "address"


@pytest.mark.parametrize("arg", ["TO:<jöe@example.org>", "TO:<用户@example.org>"])
def test_non_ascii_local_part_without_smtputf8_is_refused(arg):
    # james.md section 3: a non-ASCII unquoted local part is a bad recipient (553 5.1.3);
    # RFC 6531 allows one only when SMTPUTF8 is in use.
    assert kind_of(parse_rcpt_argument, arg) == "address"
    assert kind_of(parse_mail_argument, "FROM" + arg[2:]) == "address"
    # a parameter value that merely contains the word is not the SMTPUTF8 parameter
    assert kind_of(parse_mail_argument, "FROM" + arg[2:] + " ENVID=NOSMTPUTF8") == "address"


def test_non_ascii_local_part_with_smtputf8_is_accepted():
    assert parse_mail_argument("FROM:<jöe@example.org> SMTPUTF8").address == \
        Address("jöe", "example.org")
    assert parse_rcpt_argument("TO:<用户@例子.广告> SMTPUTF8").address == Address("用户", "例子.广告")


# -- RCPT TO ---------------------------------------------------------------------------------------

def test_rcpt_basic_and_parameters():
    parsed = parse_rcpt_argument("TO:<c@d.example> notify=SUCCESS,FAILURE ORCPT=rfc822;c@d.example")
    assert parsed == PathArgument(Address("c", "d.example"),
                                  {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;c@d.example"})
    assert parse_rcpt_argument("to: <c@d.example>").address == Address("c", "d.example")


@pytest.mark.parametrize("arg", ["TO:<>", "TO:<@>", "TO:<> NOTIFY=NEVER"])
def test_rcpt_has_no_null_path(arg):
    assert kind_of(parse_rcpt_argument, arg) == "address"


@pytest.mark.parametrize("arg", [None, "", "<c@d.example>", "FROM:<c@d.example>", "TO<c@d.example>",
                                 "TO <c@d.example>"])
def test_rcpt_usage(arg):
    assert kind_of(parse_rcpt_argument, arg) == "usage"


def test_rcpt_duplicate_parameters():
    assert kind_of(parse_rcpt_argument, "TO:<c@d.example> NOTIFY=NEVER notify=NEVER") == "parameters"


@pytest.mark.parametrize("arg", ["TO:<postmaster>", "TO:<Postmaster>", "TO:<abuse>"])
def test_domain_less_postmaster(arg):
    address = parse_rcpt_argument(arg).address
    assert address.domain is None
    assert address.local == arg[4:-1]
    assert str(address) == arg[4:-1]
    assert address.domain_lower == ""
    assert address.with_domain("example.org") == Address(arg[4:-1], "example.org")
    assert str(address.with_domain("example.org")) == arg[4:-1] + "@example.org"


def test_domain_less_sender():
    # James appends the default domain to a sender without '@' (the caller does).
    assert parse_mail_argument("FROM:<user>").address == Address("user", None)


def test_parse_mailbox_without_domain_can_be_refused():
    assert parse_mailbox("postmaster") == Address("postmaster", None)
    assert kind_of(parse_mailbox, "postmaster", allow_no_domain=False) == "address"
    assert kind_of(parse_mailbox, "") == "address"


def test_address_domain_lower():
    assert Address("A", "Example.ORG").domain_lower == "example.org"


def test_parse_parameters_directly():
    assert parse_parameters("") == {}
    assert parse_parameters("a=1 B c-d=x") == {"A": "1", "B": None, "C-D": "x"}
    assert kind_of(parse_parameters, "a=1 A=2") == "parameters"


# -- HELO / EHLO -----------------------------------------------------------------------------------

# James checklist item 12: HELO (and so EHLO) accepts these.
HELO_ACCEPT = [
    "good", "adomain.com", "sub.domain.com", "127.0.0.1", "[127.0.0.1]",
    "fe80::1ff:fe23:4567:890a", "[fe80::1ff:fe23:4567:890a]",
    "2001:db8:85a3::8a2e:370:7334", "[2001:db8:85a3::8a2e:370:7334]",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
]

# James checklist item 14: EHLO accepts these as well.
EHLO_ONLY_ACCEPT = [
    "IPV6:2a01:cb14:831:c200:7081:a7b1:6b47:4a2b", "ipv6:2a01:cb14:831:c200::1",
    "[IPV6:2a01:cb14:831:c200::1]", "[IPv6:::ffff:172.16.149.220]", "IPv6:::ffff:172.16.149.220",
]
EHLO_ACCEPT = HELO_ACCEPT + EHLO_ONLY_ACCEPT + ["[abc.def]", "[124.54.67.43]", "7kO2OrE",
                                                 "1abc.example", "0.example.org"]

# James checklist items 13 and 15: both reject these.
HELO_REJECT = [
    "bad value", "localhost) (spoofed into received header", "localhost)", "127.0.0.1/24",
    "sub..bad", "[]", "", "[", "-a", "a-", "a_b", ".example", "example.", "[abc..def]",
    "[127.0.0.1", "a" * 256,
]


@pytest.mark.parametrize("arg", HELO_ACCEPT)
def test_helo_accepts(arg):
    assert is_valid_helo(arg)
    assert is_valid_helo(arg, ehlo=True)


@pytest.mark.parametrize("arg", EHLO_ACCEPT)
def test_ehlo_accepts(arg):
    assert is_valid_helo(arg, ehlo=True)


@pytest.mark.parametrize("arg", EHLO_ONLY_ACCEPT)
def test_helo_refuses_ipv6_tagged_literals(arg):
    assert not is_valid_helo(arg)


@pytest.mark.parametrize("arg", HELO_REJECT)
def test_helo_and_ehlo_reject(arg):
    assert not is_valid_helo(arg)
    assert not is_valid_helo(arg, ehlo=True)


@pytest.mark.parametrize("arg", ["IPv6:", "[IPv6:]", "IPv6:1.2.3.4.5", "[IPv6:zz::1]",
                                 "IPv6:zz", "IPv6:localhost", "[IPv6:abc.def]"])
def test_ehlo_rejects_ipv6_tag_without_an_ipv6_address(arg):
    # RFC 5321 4.1.3: IPv6-address-literal = "IPv6:" IPv6-addr.  After the tag only an IPv6
    # address may follow; "IPv6:zz" is neither a domain (':' is not allowed) nor a literal.
    assert not is_valid_helo(arg, ehlo=True)
