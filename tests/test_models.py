"""The models alone: defaults, key order, validation messages (no Docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from backend.models import SERVICE_KEYS, RollbackRequest, Service, ServiceSpec, ServiceUpdate, field_errors

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def seed_example_response() -> dict:
    """The seed's example response to POST /services/create (copied from the product's seed)."""
    return json.loads((FIXTURES / "services-create-response.json").read_text())


# The seed's example request (its image is replaced by an offline one where a test runs it for real).
SEED_REQUEST = json.loads((FIXTURES / "services-create-request.json").read_text())


def errors_of(**fields) -> dict[str, str]:
    body = {"Name": "web", "Image": "busybox", "Replicas": 1, "ServicePort": 80, **fields}
    with pytest.raises(ValidationError) as caught:
        ServiceSpec.model_validate(body)
    return {e.field: e.message for e in field_errors(caught.value)}


def test_service_object_has_the_seed_keys_in_the_seed_order():
    assert list(SERVICE_KEYS) == list(seed_example_response())


def test_seed_request_gets_the_documented_defaults():
    spec = ServiceSpec.model_validate(SEED_REQUEST)
    service = Service.from_spec(spec, Tenant="b8dc36865f4b480683dabb25598d61c4")
    seed = seed_example_response()
    dumped = service.model_dump()
    # Every default the seed shows, except NetMode/StopSignal: SPEC.md names their defaults
    # ("bridge", "SIGTERM") where the seed's example shows "".
    for key in ("WorkingDir", "ContainerSize", "SSLCert", "HealthCheckInterval", "HealthCheckFall",
                "HealthCheckRise", "Algorithm", "Stdin", "Tty", "SessionAffinity", "Entrypoint", "Cmd",
                "Env", "Volumes", "SecurityGroups", "ContainerPort", "Labels"):
        assert dumped[key] == seed[key], key
    assert dumped["NetMode"] == "bridge" and dumped["StopSignal"] == "SIGTERM"


def test_container_port_follows_service_port_unless_given():
    assert ServiceSpec(Name="a", Image="b", Replicas=1, ServicePort=8080).ContainerPort == 8080
    assert ServiceSpec(Name="a", Image="b", Replicas=1, ServicePort=80, ContainerPort=8080).ContainerPort == 8080


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"Replicas": 0}, "Replicas", "at least 1"),
        ({"Replicas": 101}, "Replicas", "at most 100"),
        ({"ServicePort": 70000}, "ServicePort", "at most 65535"),
        ({"ContainerPort": 0}, "ContainerPort", "at least 1"),
        ({"Name": "Bad_Name"}, "Name", "DNS label"),
        ({"Name": "-web"}, "Name", "DNS label"),
        ({"Name": "a" * 64}, "Name", "DNS label"),
        ({"Env": ["FOO"]}, "Env", "VAR=value"),
        ({"Env": ["1FOO=x"]}, "Env", "not a valid variable name"),
        ({"Env": ["FOO=a\nb"]}, "Env", "control characters"),
        ({"Volumes": ["/etc:/data"]}, "Volumes", "host paths are not allowed"),
        ({"Volumes": ["./x:/data"]}, "Volumes", "host paths are not allowed"),
        ({"Volumes": ["data:relative"]}, "Volumes", "absolute"),
        ({"Volumes": ["data:/d:rx"]}, "Volumes", "volume_name:/container/path"),
        ({"WorkingDir": "app"}, "WorkingDir", "absolute path"),
        ({"WorkingDir": "/app\n"}, "WorkingDir", "control characters"),
        ({"Image": "UPPER/case"}, "Image", "image reference"),
        ({"Image": "nginx\nbind :1"}, "Image", "image reference"),
        ({"Protocol": "udp"}, "Protocol", "tcp, http, https or httpsTerm"),
        ({"Algorithm": "random"}, "Algorithm", "roundrobin, leastconn or source"),
        ({"ContainerSize": "xl"}, "ContainerSize", "s1"),
        ({"NetMode": "host"}, "NetMode", "bridge"),
        ({"StopSignal": "SIGFOO"}, "StopSignal", "signal name"),
        ({"StopSignal": "99"}, "StopSignal", "between 1 and 64"),
        ({"HealthCheckInterval": 0}, "HealthCheckInterval", "at least 1"),
        ({"HealthCheckFall": 0}, "HealthCheckFall", "at least 1"),
        ({"HealthCheckRise": 0}, "HealthCheckRise", "at least 1"),
        ({"Labels": {"bad key": "x"}}, "Labels", "not a valid label key"),
        ({"Labels": {"io.hyperservice.role": "x"}}, "Labels", "reserved"),
        ({"Labels": {"com.docker.compose.project": "x"}}, "Labels", "com.docker.compose. are reserved"),
        ({"Labels": {"com.docker.stack.namespace": "x"}}, "Labels", "com.docker.stack. are reserved"),
        ({"Labels": {"traefik.http.routers.x.rule": "Host(`a`)"}}, "Labels", "traefik. are reserved"),
        ({"Labels": {"Traefik.enable": "true"}}, "Labels", "traefik. are reserved"),
        ({"Labels": ["traefik.enable=true"]}, "Labels", "traefik. are reserved"),
        ({"Volumes": ["v" * 129 + ":/data"]}, "Volumes", "longer than 128"),
        ({"Labels": {"k": "v\nserver evil 1.2.3.4:80"}}, "Labels", "control characters"),
        ({"Labels": ["novalue"]}, "Labels", "key=value"),
        ({"SecurityGroups": ["bad group"]}, "SecurityGroups", "not a valid group name"),
        ({"Cmd": 'echo "unbalanced'}, "Cmd", "shell-like"),
        ({"Protocol": "httpsTerm"}, "SSLCert", "required for httpsTerm"),
        ({"SSLCert": "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----"}, "SSLCert", "only allowed"),
        ({"Surprise": 1}, "Surprise", "not a known field"),
        ({"Replicas": "many"}, "Replicas", "whole number"),
        ({"Tty": "perhaps"}, "Tty", "true or false"),
    ],
)
def test_bad_values_name_their_field_and_say_what_is_allowed(fields, field, words):
    errors = errors_of(**fields)
    assert field in errors, errors
    assert words in errors[field]


# ESC (OSC 52 clipboard write, screen clear), BEL, CR, tab, NUL, DEL and a C1 control (CSI).
CONTROL_CHARACTERS = ["\x1b]52;c;SGVsbG8=\x07", "\x1b[2J", "\x07", "\r", "\t", "\x00", "\x7f", "\x9b31m"]


@pytest.mark.parametrize("control", CONTROL_CHARACTERS, ids=repr)
@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("Cmd", lambda c: ["echo", f"a{c}b"]),
        ("Cmd", lambda c: f"echo 'a{c}b'"),  # the shell-like line keeps it inside a word
        ("Entrypoint", lambda c: ["/bin/sh", f"-c{c}"]),
        ("Env", lambda c: [f"A=x{c}y"]),
        ("Env", lambda c: [f"A{c}=x"]),
        ("Labels", lambda c: {"k": f"v{c}w"}),
        ("Labels", lambda c: {f"k{c}": "v"}),
        ("Labels", lambda c: [f"k=v{c}w"]),
    ],
)
def test_control_characters_are_refused_in_cmd_entrypoint_env_and_labels(field, make, control):
    errors = errors_of(**{field: make(control)})
    assert "must not contain newlines or other control characters" in errors.get(field, ""), errors
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", errors[field])  # the message shows the value escaped


def test_required_fields():
    with pytest.raises(ValidationError) as caught:
        ServiceSpec.model_validate({})
    fields = {e.field: e.message for e in field_errors(caught.value)}
    assert fields == {f: "is required" for f in ("Name", "Image", "ServicePort", "Replicas")}


def test_max_replicas_comes_from_the_backend_settings():
    body = {"Name": "a", "Image": "b", "ServicePort": 1, "Replicas": 7}
    ServiceSpec.model_validate(body, context={"max_replicas": 7})
    with pytest.raises(ValidationError, match="at most 6"):
        ServiceSpec.model_validate(body, context={"max_replicas": 6})


def test_lenient_forms_become_canonical():
    spec = ServiceSpec(
        Name="a", Image="registry.local:5000/team/app:1.2@sha256:" + "a" * 64, Replicas=1, ServicePort=1,
        Cmd="sh -c 'echo hello world'", Entrypoint=[], Labels=["tier=web", "team=ops"], StopSignal="term",
        Volumes=["data:/var/lib/data:ro"], Env=["A=1", "B="],
    )
    assert spec.Cmd == ["sh", "-c", "echo hello world"]
    assert spec.Entrypoint is None
    assert spec.Labels == {"tier": "web", "team": "ops"}
    assert spec.StopSignal == "SIGTERM"
    assert ServiceSpec(Name="a", Image="b", Replicas=1, ServicePort=1, StopSignal=9).StopSignal == "9"


def test_httpsterm_takes_a_matching_chain_and_key():
    ca = trustme.CA()
    cert = ca.issue_cert("web.example")
    good = cert.private_key_and_cert_chain_pem.bytes().decode()
    spec = ServiceSpec(Name="a", Image="b", Replicas=1, ServicePort=443, Protocol="httpsTerm", SSLCert=good)
    assert spec.SSLCert == good
    other_key = ca.issue_cert("other.example").private_key_pem.bytes().decode()
    chain_only = "".join(blob.bytes().decode() for blob in cert.cert_chain_pems)
    for bad, words in [
        (chain_only, "no private key"),
        (chain_only + other_key, "does not match"),
        (good + "\nglobal\n  daemon\n", "only PEM blocks"),
        ("not a pem", "only PEM blocks"),
    ]:
        errors = errors_of(Protocol="httpsTerm", SSLCert=bad, ServicePort=443)
        assert words in errors["SSLCert"], errors
        assert "PRIVATE KEY-----\nMII" not in errors["SSLCert"]  # key material never echoed


def test_service_object_never_carries_the_certificate():
    ca = trustme.CA()
    pem = ca.issue_cert("a.example").private_key_and_cert_chain_pem.bytes().decode()
    spec = ServiceSpec(Name="a", Image="b", Replicas=1, ServicePort=443, Protocol="httpsTerm", SSLCert=pem)
    assert Service.from_spec(spec, Tenant="0" * 32).SSLCert == ""


def test_update_request():
    assert ServiceUpdate.model_validate({"Replicas": 3}).Replicas == 3
    assert ServiceUpdate.model_validate({"FIP": ""}).FIP == ""
    for body, field in [({"Replicas": 0}, "Replicas"), ({"Image": "Bad Image"}, "Image"),
                        ({"FIP": "300.1.1.1"}, "FIP"), ({"Name": "x"}, "Name")]:
        with pytest.raises(ValidationError) as caught:
            ServiceUpdate.model_validate(body)
        assert field in {e.field for e in field_errors(caught.value)}
    with pytest.raises(ValidationError, match="at least one of"):
        ServiceUpdate.model_validate({})


@pytest.mark.parametrize("model, body, field", [
    (ServiceSpec, {"Name": "web", "Image": "busybox", "Replicas": True, "ServicePort": 80}, "Replicas"),
    (ServiceSpec, {"Name": "web", "Image": "busybox", "Replicas": 1, "ServicePort": "80"}, "ServicePort"),
    (ServiceUpdate, {"Replicas": False}, "Replicas"),
    (RollbackRequest, {"Revision": True}, "Revision"),
    (RollbackRequest, {"Revision": "2"}, "Revision"),
])
def test_a_whole_number_is_a_json_number_not_a_boolean_or_text(model, body, field):
    # Lax pydantic read `true` as 1: the fuzzer's `{"Revision": true}` rolled a service back.
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    assert [e.field for e in field_errors(caught.value)] == [field]


def test_whole_numbers_and_flags_still_pass():
    assert RollbackRequest.model_validate({"Revision": 2}).Revision == 2
    spec = ServiceSpec.model_validate({"Name": "web", "Image": "busybox", "Replicas": 2, "ServicePort": 80,
                                       "Tty": True, "StopSignal": 9})
    assert (spec.Replicas, spec.Tty, spec.StopSignal) == (2, True, "9")


def test_a_revision_beyond_any_stored_number_is_a_field_error():
    # The fuzzer's {"Revision": 11105096738359140352} overflowed SQLite's integer: a 500.
    with pytest.raises(ValidationError) as caught:
        RollbackRequest.model_validate({"Revision": 11105096738359140352})
    assert [e.field for e in field_errors(caught.value)] == ["Revision"]
