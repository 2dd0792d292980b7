"""Hypothesis strategies for every MQTT packet, per protocol version."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from loadgen import mqtt
from loadgen.mqtt import properties as props
from loadgen.mqtt.properties import Kind

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
topics = texts.filter(lambda t: t and "+" not in t and "#" not in t)
packet_ids = st.integers(min_value=1, max_value=0xFFFF)
reason_codes = st.sampled_from([int(c) for c in mqtt.ReasonCode])

_VALUES = {
    Kind.BYTE: st.integers(0, 0xFF),
    Kind.TWO: st.integers(0, 0xFFFF),
    Kind.FOUR: st.integers(0, 0xFFFFFFFF),
    Kind.VARINT: st.integers(1, 268_435_455),
    Kind.STRING: texts,
    Kind.BINARY: st.binary(max_size=20),
    Kind.PAIR: st.tuples(texts, texts),
}


# Properties whose kind allows more than MQTT 5 does (a Protocol Error otherwise).
_ONLY = {
    "receive_maximum": st.integers(1, 0xFFFF),
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "request_problem_information": st.integers(0, 1),
    "request_response_information": st.integers(0, 1),
    "maximum_qos": st.integers(0, 1),
    "retain_available": st.integers(0, 1),
    "wildcard_subscription_available": st.integers(0, 1),
    "subscription_identifier_available": st.integers(0, 1),
    "shared_subscription_available": st.integers(0, 1),
}


def properties(packet: str, version: int) -> st.SearchStrategy[mqtt.Properties]:
    if version != mqtt.MQTT_5:
        return st.just(mqtt.EMPTY)
    fields = {}
    for name, kind in props.allowed(packet):
        if name in ("user_property", "subscription_identifier"):
            # A SUBSCRIBE carries one Subscription Identifier at most.
            most = 1 if (name, packet) == ("subscription_identifier", "SUBSCRIBE") else 3
            fields[name] = st.lists(_VALUES[kind], max_size=most).map(tuple)
        else:
            fields[name] = st.none() | _ONLY.get(name, _VALUES[kind])
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: mqtt.Properties(**kw))


def _v5_or(version: int, v5: st.SearchStrategy, v3: st.SearchStrategy) -> st.SearchStrategy:
    return v5 if version == mqtt.MQTT_5 else v3


@st.composite
def connects(draw: st.DrawFn, version: int) -> mqtt.Connect:
    will = draw(
        st.none()
        | st.builds(
            mqtt.Will,
            topic=topics,
            payload=st.binary(max_size=30),
            qos=st.integers(0, 2),
            retain=st.booleans(),
            properties=properties("W", version),
        )
    )
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=20))
    if version == mqtt.MQTT_3_1_1 and username is None:
        password = None  # 3.1.1 allows no password without a user name
    return mqtt.Connect(
        client_id=draw(texts),
        protocol_version=version,
        clean_start=draw(st.booleans()),
        keepalive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=password,
        will=will,
        properties=draw(properties("CONNECT", version)),
    )


@st.composite
def publishes(draw: st.DrawFn, version: int) -> mqtt.Publish:
    qos = draw(st.integers(0, 2))
    return mqtt.Publish(
        topic=draw(topics),
        payload=draw(st.binary(max_size=200)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
        properties=draw(properties("PUBLISH", version)),
    )


def _acks(cls: type, name: str, version: int) -> st.SearchStrategy:
    return st.builds(
        cls,
        packet_id=packet_ids,
        reason_code=_v5_or(version, reason_codes, st.just(0)),
        properties=properties(name, version),
    )


def subscriptions(version: int) -> st.SearchStrategy[mqtt.Subscription]:
    if version != mqtt.MQTT_5:
        return st.builds(mqtt.Subscription, topic_filter=texts, qos=st.integers(0, 2))
    return st.builds(
        mqtt.Subscription,
        topic_filter=texts,
        qos=st.integers(0, 2),
        no_local=st.booleans(),
        retain_as_published=st.booleans(),
        retain_handling=st.integers(0, 2),
    ).filter(lambda s: not (s.no_local and s.topic_filter.startswith("$share/")))


def packets(version: int) -> st.SearchStrategy[mqtt.Packet]:
    """Every packet a peer of ``version`` can send, CONNECT excepted."""
    codes = _v5_or(version, reason_codes, st.sampled_from([0, 1, 2, 0x80]))
    v5 = version == mqtt.MQTT_5
    choices = [
        st.builds(
            mqtt.ConnAck,
            reason_code=_v5_or(version, reason_codes, st.integers(0, 5)),
            session_present=st.booleans(),
            properties=properties("CONNACK", version),
        ).map(lambda a: a if not a.reason_code else replace(a, session_present=False)),
        publishes(version),
        _acks(mqtt.PubAck, "PUBACK", version),
        _acks(mqtt.PubRec, "PUBREC", version),
        _acks(mqtt.PubRel, "PUBREL", version),
        _acks(mqtt.PubComp, "PUBCOMP", version),
        st.builds(
            mqtt.Subscribe,
            packet_id=packet_ids,
            subscriptions=st.lists(subscriptions(version), min_size=1, max_size=4).map(tuple),
            properties=properties("SUBSCRIBE", version),
        ),
        st.builds(
            mqtt.SubAck,
            packet_id=packet_ids,
            reason_codes=st.lists(codes, max_size=4).map(tuple),
            properties=properties("SUBACK", version),
        ),
        st.builds(
            mqtt.Unsubscribe,
            packet_id=packet_ids,
            topic_filters=st.lists(texts, min_size=1, max_size=4).map(tuple),
            properties=properties("UNSUBSCRIBE", version),
        ),
        st.builds(
            mqtt.UnsubAck,
            packet_id=packet_ids,
            reason_codes=st.lists(codes, max_size=4).map(tuple) if v5 else st.just(()),
            properties=properties("UNSUBACK", version),
        ),
        st.just(mqtt.PingReq()),
        st.just(mqtt.PingResp()),
        st.builds(
            mqtt.Disconnect,
            reason_code=_v5_or(version, reason_codes, st.just(0)),
            properties=properties("DISCONNECT", version),
        ),
    ]
    if v5:
        choices.append(
            st.builds(mqtt.Auth, reason_code=reason_codes, properties=properties("AUTH", version))
        )
    return st.one_of(choices)
