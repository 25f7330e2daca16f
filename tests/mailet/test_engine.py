"""The engine without sockets: splitting, routing, ghost, exceptions, the loop bound."""

from __future__ import annotations

import pytest

from chainmail.config.errors import ConfigError
from chainmail.mailet.api import GHOST
from chainmail.mailet.engine import MAX_HOPS, PropagatedError

from .helpers import Record, build, container_xml, mail


def proc(state: str, body: str) -> str:
    return f'<processor state="{state}">{body}</processor>'


async def test_matcher_splits_recipients_and_both_parts_go_on(context):
    xml = container_xml(proc("root", """
        <mailet match="RecipientIs=a@local.test,c@local.test" class="Record"><tag>matched</tag></mailet>
        <mailet match="All" class="Record"><tag>all</tag></mailet>
        <mailet match="All" class="Null"/>"""))
    engine = build(xml, context)
    result = await engine.service(mail(["a@local.test", "b@local.test", "c@local.test"]))
    assert ("matched", ("a@local.test", "c@local.test")) in Record.seen
    # the matched copy and the rest both reach the next mailet, each with its recipients
    assert sorted(r for t, r in Record.seen if t == "all") == [("a@local.test", "c@local.test"),
                                                                ("b@local.test",)]
    assert len(result.finished) == 2 and all(m.state == GHOST for m in result.finished)


async def test_no_match_skips_and_all_match_does_not_split(context):
    xml = container_xml(proc("root", """
        <mailet match="HostIs=nowhere.test" class="Record"><tag>never</tag></mailet>
        <mailet match="HostIs=local.test" class="Record"><tag>whole</tag></mailet>
        <mailet match="All" class="Null"/>"""))
    result = await build(xml, context).service(mail(["a@local.test", "b@local.test"]))
    assert Record.seen == [("whole", ("a@local.test", "b@local.test"))]
    assert len(result.finished) == 1


async def test_notmatch_inverts(context):
    xml = container_xml(proc("root", """
        <mailet notmatch="RecipientIs=a@local.test" class="Record"><tag>not-a</tag></mailet>
        <mailet match="All" class="Null"/>"""))
    await build(xml, context).service(mail(["a@local.test", "b@local.test"]))
    assert Record.seen == [("not-a", ("b@local.test",))]


async def test_state_change_routes_to_the_processor_and_trace_records_it(context):
    xml = container_xml(proc("root", '<mailet match="All" class="ToProcessor"><processor>two</processor></mailet>'
                             '<mailet match="All" class="Record"><tag>after</tag></mailet>')
                        + proc("two", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    assert Record.seen == [("two", ("bob@local.test",))]   # the rest of root is skipped
    [done] = result.finished
    assert done.trace == ["root", "two"] and done.state == GHOST


async def test_empty_recipients_or_ghost_finish_the_mail(context):
    xml = container_xml(proc("root", '<mailet match="All" class="Null"/>'
                             '<mailet match="All" class="Record"/>'))
    result = await build(xml, context).service(mail())
    assert Record.seen == [] and result.finished[0].state == GHOST


async def test_falling_off_the_end_is_ghost_with_a_warning(context, caplog):
    xml = container_xml(proc("root", '<mailet match="All" class="Record"/>'))
    result = await build(xml, context).service(mail())
    assert result.finished[0].state == GHOST
    assert "reached the end of processor root" in caplog.text


async def test_mailet_exception_goes_to_error_with_the_reason(context):
    xml = container_xml(proc("root", '<mailet match="All" class="Crash"/><mailet match="All" class="Record"/>')
                        + proc("error", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    assert Record.seen == [("error", ("bob@local.test",))]
    [done] = result.finished
    assert done.trace == ["root", "error"]
    assert "Crash in processor root failed: RuntimeError: crash test" in done.error_message


@pytest.mark.parametrize("action, expected", [
    ("ignore", [("root", ("bob@local.test",))]),
    ("other", [("other", ("bob@local.test",))]),
])
async def test_on_mailet_exception_ignore_or_processor(context, action, expected):
    xml = container_xml(proc("root", f'<mailet match="All" class="Crash"><onMailetException>{action}'
                             '</onMailetException></mailet><mailet match="All" class="Record"/>'
                             '<mailet match="All" class="Null"/>')
                        + proc("other", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>')
                        + proc("error", '<mailet match="All" class="Null"/>'))
    await build(xml, context).service(mail())
    assert Record.seen == expected


async def test_on_mailet_exception_propagate_raises(context):
    xml = container_xml(proc("root", '<mailet match="All" class="Crash" onMailetException="propagate"/>'))
    with pytest.raises(PropagatedError, match="crash test"):
        await build(xml, context).service(mail())


@pytest.mark.parametrize("action, seen", [
    ("matchall", [("root", ("bob@local.test", "x@local.test"))]),
    ("nomatch", []),
    ("error", [("error", ("bob@local.test", "x@local.test"))]),
    ("other", [("other", ("bob@local.test", "x@local.test"))]),
])
async def test_on_match_exception(context, action, seen):
    xml = container_xml(proc("root", f'<mailet match="Boom" class="Record"><onMatchException>{action}'
                             '</onMatchException></mailet><mailet match="All" class="Null"/>')
                        + proc("other", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>')
                        + proc("error", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'))
    await build(xml, context).service(mail(["bob@local.test", "x@local.test"]))
    assert Record.seen == seen


async def test_error_in_the_error_processor_goes_on_with_its_next_mailet(context):
    xml = container_xml(proc("root", '<mailet match="All" class="Crash"/>')
                        + proc("error", '<mailet match="All" class="Crash"/><mailet match="All" class="Record"/>'
                                        '<mailet match="All" class="Null"/>'))
    await build(xml, context).service(mail())
    assert Record.seen == [("error", ("bob@local.test",))]


async def test_routing_loop_ends_in_error(context):
    xml = container_xml(proc("root", '<mailet match="All" class="ToProcessor"><processor>b</processor></mailet>')
                        + proc("b", '<mailet match="All" class="ToProcessor"><processor>root</processor></mailet>')
                        + proc("error", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    assert Record.seen == [("error", ("bob@local.test",))]
    [done] = result.finished
    assert "processing loop" in done.error_message and done.hops == MAX_HOPS + 1


async def test_loop_through_the_error_processor_is_stored_in_the_error_repository(context, stores):
    xml = container_xml(proc("root", '<mailet match="All" class="GoTo"><state>error</state></mailet>')
                        + proc("error", '<mailet match="All" class="GoTo"><state>root</state></mailet>'))
    result = await build(xml, context).service(mail())
    [key] = result.stored
    repo = stores.repositories.get("file://var/mail/error/")
    assert repo.keys() == [key]
    assert "processing loop" in repo.info(key).error_message


async def test_unknown_state_goes_to_error(context):
    xml = container_xml(proc("root", '<mailet match="All" class="GoTo"><state>nowhere</state></mailet>')
                        + proc("error", '<mailet match="All" class="Record"/><mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    assert Record.seen == [("error", ("bob@local.test",))]
    assert result.finished[0].error_message == "no processor named 'nowhere'"


async def test_composite_matchers(context):
    xml = container_xml(proc("root", """
        <matcher name="a-or-b" match="org.apache.james.mailetcontainer.impl.matchers.Or">
          <matcher match="RecipientIs=a@local.test"/><matcher match="RecipientIs=b@local.test"/>
        </matcher>
        <matcher name="local-not-a" match="And">
          <matcher match="HostIs=local.test"/>
          <matcher name="not-a" match="Not"><matcher match="RecipientIs=a@local.test"/></matcher>
        </matcher>
        <matcher name="xor" match="Xor">
          <matcher match="RecipientIs=a@local.test,b@local.test"/><matcher match="RecipientIs=b@local.test,c@r.test"/>
        </matcher>
        <mailet match="a-or-b" class="Record"><tag>or</tag></mailet>
        <mailet match="local-not-a" class="Record"><tag>and-not</tag></mailet>
        <mailet match="xor" class="Record"><tag>xor</tag></mailet>
        <mailet match="All" class="Null"/>"""))
    await build(xml, context).service(mail(["a@local.test", "b@local.test", "c@r.test"]))
    seen = {}
    for tag, rcpts in Record.seen:
        seen.setdefault(tag, set()).update(rcpts)
    assert seen["or"] == {"a@local.test", "b@local.test"}
    assert seen["and-not"] == {"b@local.test"}
    assert seen["xor"] == {"a@local.test", "c@r.test"}


async def test_async_and_thread_kinds(context):
    xml = container_xml(proc("root", '<mailet match="AsyncAll" class="ThreadMailet"/>'
                             '<mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    assert result.finished[0].attributes["thread"] != "MainThread"


async def test_send_mail_is_collected_as_output(context):
    xml = container_xml(proc("root", '<mailet match="All" class="SendBack"><state>two</state></mailet>')
                        + proc("two", '<mailet match="All" class="Null"/>'))
    result = await build(xml, context).service(mail())
    [out] = result.outputs
    assert out.state == "two" and out.attributes["sent_by_mailet"] is True and out.hops == 1


def test_configuration_errors_name_file_and_line(context):
    xml = container_xml(proc("root", '\n<mailet match="All" class="NoSuchMailet"/>'))
    with pytest.raises(ConfigError) as err:
        build(xml, context)
    assert err.value.line == 2 and "no installed mailet provides 'NoSuchMailet'" in str(err.value)
    assert "LocalDelivery" in str(err.value)
    with pytest.raises(ConfigError, match="no installed matcher provides 'Nope'"):
        build(container_xml(proc("root", '<mailet match="Nope=1" class="Null"/>')), context)
    with pytest.raises(ConfigError, match="onMailetException.*'elsewhere'"):
        build(container_xml(proc("root", '<mailet match="All" class="Null" onMailetException="elsewhere"/>')), context)
    with pytest.raises(ConfigError, match="no processor named 'missing'"):
        build(container_xml(proc("root", '<mailet match="All" class="ToProcessor"><processor>missing</processor></mailet>')), context)
    with pytest.raises(ConfigError, match="needs a condition"):
        build(container_xml(proc("root", '<mailet match="HostIs" class="Null"/>')), context)
    with pytest.raises(ConfigError, match="not a composite matcher"):
        build(container_xml(proc("root", '<matcher name="x" match="Maybe"><matcher match="All"/></matcher>')), context)


def test_james_class_names_resolve(context):
    xml = container_xml(proc("root", '<mailet match="org.apache.james.transport.matchers.All" '
                             'class="org.apache.james.transport.mailets.Null"/>'))
    engine = build(xml, context)
    assert type(engine.processors["root"].pairs[0].mailet).__name__ == "Null"
    # a full name of another vendor finds the unique short name
    xml = container_xml(proc("root", '<mailet match="All" class="com.example.Null"/>'))
    assert type(build(xml, context).processors["root"].pairs[0].mailet).__name__ == "Null"
