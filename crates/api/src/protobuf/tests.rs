//! Tests of the protobuf decoder. The fixtures in `testdata/` are request bodies real kubectl
//! v1.32 sent to a Switchyard server, each beside the JSON it must decode to: for `kubectl create`
//! commands that JSON is `kubectl create ... --dry-run=client -o json` for the same command,
//! byte for byte in key order; `kubectl debug` has no dry run, so its pods' JSON was reviewed by
//! hand. The other tests build bodies with the small encoder below.

use super::decode::go_duration;
use super::*;
use serde_json::{json, Value};

/// (fixture name, command that sent it).
const FIXTURES: &[(&str, &str)] = &[
    ("service-nodeport", "kubectl create service nodeport np --tcp=80:8080"),
    ("service-nodeport-30080", "kubectl create service nodeport np2 --tcp=80:8080 --node-port=30080"),
    ("service-nodeport-33333", "kubectl create service nodeport np33 --tcp=80:8080 --node-port=33333"),
    ("service-headless-named-port", "kubectl create service clusterip cip --tcp=5678:http --clusterip=None"),
    ("service-loadbalancer", "kubectl create service loadbalancer lb --tcp=443:8443"),
    ("service-externalname", "kubectl create service externalname ext --external-name=example.com"),
    ("deployment", "kubectl create deployment web --image=nginx --replicas=2 --port=80"),
    ("deployment-zero-replicas", "kubectl create deployment zero --image=nginx --replicas=0"),
    ("deployment-two-containers", "kubectl create deployment multi --image=nginx --image=redis"),
    (
        "configmap-binary",
        "kubectl create configmap app --from-literal=mode=prod --from-file=app.properties --from-file=logo.bin",
    ),
    ("namespace", "kubectl create namespace team"),
    ("pod-debug-node", "kubectl debug node/n1 --image=busybox"),
    ("pod-debug-copy", "kubectl debug pod1 --copy-to=pod1-copy --image=busybox --share-processes"),
];

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protobuf/testdata");
    let pb = std::fs::read(dir.join(format!("{name}.pb"))).expect("fixture body");
    let json = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("fixture JSON");
    (
        pb,
        serde_json::from_str(&json).expect("fixture JSON parses"),
    )
}

fn decoded(name: &str) -> Value {
    decode(&fixture(name).0).expect("fixture decodes")
}

// A minimal protobuf encoder for hand-built bodies.

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn int(tag: u32, v: i64) -> Vec<u8> {
    [varint(u64::from(tag) << 3), varint(v as u64)].concat()
}

fn len(tag: u32, payload: &[u8]) -> Vec<u8> {
    [
        varint((u64::from(tag) << 3) | 2),
        varint(payload.len() as u64),
        payload.to_vec(),
    ]
    .concat()
}

fn text(tag: u32, s: &str) -> Vec<u8> {
    len(tag, s.as_bytes())
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [text(1, api_version), text(2, kind)].concat();
    [
        MAGIC.to_vec(),
        len(1, &type_meta),
        len(2, raw),
        text(3, ""),
        text(4, ""),
    ]
    .concat()
}

fn meta(name: &str) -> Vec<u8> {
    len(1, &text(1, name))
}

#[test]
fn every_captured_kubectl_body_decodes_to_what_kubectl_prints() {
    for (name, command) in FIXTURES {
        let (pb, want) = fixture(name);
        let got = decode(&pb).unwrap_or_else(|e| panic!("{name} ({command}): {e}"));
        assert_eq!(got, want, "{name} ({command})");
        // Same keys in the same order, as Kubernetes prints them.
        assert_eq!(
            got.to_string(),
            want.to_string(),
            "{name} ({command}): key order"
        );
    }
}

#[test]
fn a_node_port_service_keeps_its_node_port_and_numeric_target_port() {
    let svc = decoded("service-nodeport-30080");
    assert_eq!(
        svc["spec"]["ports"][0],
        json!({"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080})
    );
    assert_eq!(svc["spec"]["type"], "NodePort");
}

#[test]
fn zero_values_kubectl_leaves_unset_are_omitted_as_go_omits_them() {
    // kubectl's Go client writes nodePort 0, clusterIP "", sessionAffinity "", generation 0 and
    // healthCheckNodePort 0 on the wire; none of them is in Kubernetes JSON.
    let svc = decoded("service-nodeport");
    assert_eq!(svc["spec"]["ports"][0].get("nodePort"), None);
    for field in [
        "clusterIP",
        "sessionAffinity",
        "healthCheckNodePort",
        "publishNotReadyAddresses",
    ] {
        assert_eq!(svc["spec"].get(field), None, "{field}");
    }
    assert_eq!(svc["metadata"].get("generation"), None);
    assert_eq!(svc["metadata"].get("namespace"), None);
}

#[test]
fn an_empty_creation_timestamp_is_null_and_empty_structs_stay() {
    let deploy = decoded("deployment");
    assert_eq!(deploy["metadata"]["creationTimestamp"], Value::Null);
    assert_eq!(deploy["spec"]["strategy"], json!({}));
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({})
    );
    assert_eq!(deploy["status"], json!({}));
}

#[test]
fn a_named_target_port_decodes_as_a_string() {
    assert_eq!(
        decoded("service-headless-named-port")["spec"]["ports"][0]["targetPort"],
        "http"
    );
}

#[test]
fn an_explicit_zero_replica_count_is_kept() {
    assert_eq!(decoded("deployment-zero-replicas")["spec"]["replicas"], 0);
}

#[test]
fn configmap_binary_data_is_base64_and_text_data_is_plain() {
    let cm = decoded("configmap-binary");
    assert_eq!(
        cm["data"],
        json!({"app.properties": "port=8080\n", "mode": "prod"})
    );
    assert_eq!(cm["binaryData"]["logo.bin"], "AAEC/v8gYmluYXJ5Cg==");
}

#[test]
fn a_debug_pod_keeps_pointer_booleans_and_host_namespaces() {
    let copy = decoded("pod-debug-copy");
    assert_eq!(copy["spec"]["shareProcessNamespace"], true);
    assert_eq!(copy["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(copy["spec"]["containers"].as_array().map(Vec::len), Some(2));
    let node = decoded("pod-debug-node");
    assert_eq!(node["spec"]["hostPID"], true);
    assert_eq!(node["spec"]["volumes"][0]["hostPath"]["path"], "/");
}

#[test]
fn every_built_in_kind_switchyard_serves_has_a_protobuf_message() {
    for r in crate::resources::RESOURCES
        .iter()
        .filter(|r| !r.group.ends_with("metallb.io"))
    {
        let api_version = r.api_version();
        assert!(
            schema::TOP_LEVEL
                .iter()
                .any(|t| t.kind == r.kind && t.api_version == Some(api_version.as_str())),
            "{api_version} {} has no protobuf message",
            r.kind
        );
    }
}

#[test]
fn delete_options_decode_in_any_group_version_with_a_zero_grace_period_kept() {
    let raw = [
        int(1, 0),
        len(2, &text(1, "uid-1")),
        text(4, "Foreground"),
        text(5, "All"),
    ]
    .concat();
    for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
        let v = decode(&envelope(api_version, "DeleteOptions", &raw)).expect("decodes");
        assert_eq!(
            v,
            json!({
                "kind": "DeleteOptions",
                "apiVersion": api_version,
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "uid-1"},
                "propagationPolicy": "Foreground",
                "dryRun": ["All"],
            })
        );
    }
}

#[test]
fn a_scale_to_zero_keeps_its_replica_count() {
    let raw = [meta("web"), len(2, &int(1, 0))].concat();
    let v = decode(&envelope("autoscaling/v1", "Scale", &raw)).expect("decodes");
    assert_eq!(v["spec"], json!({"replicas": 0}));
}

#[test]
fn times_print_in_seconds_and_micro_times_in_microseconds() {
    // A Lease as leader election writes it: 2024-01-01T00:00:00Z plus 1.5 ms.
    let t = [int(1, 1_704_067_200), int(2, 1_500_000)].concat();
    let spec = [text(1, "me"), int(2, 15), len(3, &t), len(4, &t), int(5, 0)].concat();
    let v = decode(&envelope(
        "coordination.k8s.io/v1",
        "Lease",
        &[meta("l"), len(2, &spec)].concat(),
    ))
    .expect("decodes");
    assert_eq!(
        v["spec"],
        json!({
            "holderIdentity": "me",
            "leaseDurationSeconds": 15,
            "acquireTime": "2024-01-01T00:00:00.001500Z",
            "renewTime": "2024-01-01T00:00:00.001500Z",
            "leaseTransitions": 0,
        })
    );
    // metadata.creationTimestamp (field 8) is a Time: whole seconds.
    let m = [text(1, "x"), len(8, &t)].concat();
    let v = decode(&envelope("v1", "ConfigMap", &len(1, &m))).expect("decodes");
    assert_eq!(v["metadata"]["creationTimestamp"], "2024-01-01T00:00:00Z");
    // The epoch is a time, not Go's zero time: only an empty message is null.
    let m = [text(1, "x"), len(8, &[int(1, 0), int(2, 0)].concat())].concat();
    let v = decode(&envelope("v1", "ConfigMap", &len(1, &m))).expect("decodes");
    assert_eq!(v["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
}

#[test]
fn quantities_in_resource_maps_print_as_their_strings() {
    let quantity = |s: &str| len(2, &text(1, s));
    let limits = [
        len(1, &[text(1, "cpu"), quantity("500m")].concat()),
        len(1, &[text(1, "memory"), quantity("64Mi")].concat()),
    ]
    .concat();
    let container = [text(1, "c"), text(2, "nginx"), len(8, &limits)].concat();
    let v = decode(&envelope(
        "v1",
        "Pod",
        &[meta("p"), len(2, &len(2, &container))].concat(),
    ))
    .expect("decodes");
    assert_eq!(
        v["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "64Mi"}})
    );
}

#[test]
fn managed_fields_embed_their_fields_v1_json() {
    let entry = [
        text(1, "kubectl"),
        text(2, "Apply"),
        text(6, "FieldsV1"),
        len(7, &len(1, br#"{"f:data":{}}"#)),
    ]
    .concat();
    let v = decode(&envelope(
        "v1",
        "ConfigMap",
        &len(1, &[text(1, "x"), len(17, &entry)].concat()),
    ))
    .expect("decodes");
    assert_eq!(
        v["metadata"]["managedFields"],
        json!([{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}])
    );
}

#[test]
fn raw_extensions_embed_json_or_a_nested_protobuf_object() {
    let json_raw = len(1, br#"{"a":[1,2]}"#);
    assert_eq!(
        decode::decode_value_for_tests(Kind::RawExtension, &json_raw),
        Ok(json!({"a": [1, 2]}))
    );
    let nested = envelope("v1", "Namespace", &meta("inner"));
    let v = decode::decode_value_for_tests(Kind::RawExtension, &len(1, &nested)).expect("decodes");
    assert_eq!(
        v,
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "inner"}})
    );
    assert!(decode::decode_value_for_tests(Kind::RawExtension, &len(1, b"{not json")).is_err());
}

#[test]
fn durations_print_as_go_prints_them() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(2_000_000), "2ms");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(-61_000_000_000), "-1m1s");
    assert_eq!(
        decode::decode_value_for_tests(Kind::Duration, &int(1, 300_000_000_000)),
        Ok(json!("5m0s"))
    );
}

#[test]
fn packed_and_unpacked_repeated_numbers_decode_alike() {
    let unpacked = [int(4, 1000), int(4, 2000)].concat();
    let packed = len(4, &[varint(1000), varint(2000)].concat());
    for groups in [unpacked, packed] {
        let v = decode(&envelope(
            "v1",
            "Pod",
            &[meta("p"), len(2, &len(14, &groups))].concat(),
        ))
        .expect("decodes");
        assert_eq!(
            v["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000])
        );
    }
}

#[test]
fn negative_int32_values_survive_their_ten_byte_encoding() {
    // IntOrString intVal -1 (type 0), sign-extended on the wire as Go writes it.
    let port = [int(3, 80), len(4, &[int(1, 0), int(2, -1)].concat())].concat();
    let v = decode(&envelope(
        "v1",
        "Service",
        &[meta("s"), len(2, &len(1, &port))].concat(),
    ))
    .expect("decodes");
    assert_eq!(v["spec"]["ports"][0]["targetPort"], -1);
}

#[test]
fn unknown_fields_are_skipped() {
    let raw = [int(99, 7), meta("x"), len(98, b"junk")].concat();
    let v = decode(&envelope("v1", "ConfigMap", &raw)).expect("decodes");
    assert_eq!(
        v,
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}})
    );
}

#[test]
fn a_message_sent_in_two_parts_is_merged() {
    let raw = [
        len(1, &text(1, "x")),
        len(1, &len(11, &[text(1, "a"), text(2, "b")].concat())),
    ]
    .concat();
    let v = decode(&envelope("v1", "ConfigMap", &raw)).expect("decodes");
    assert_eq!(v["metadata"], json!({"name": "x", "labels": {"a": "b"}}));
}

#[test]
fn a_body_without_the_magic_is_refused() {
    assert_eq!(
        decode(b"{\"kind\":\"Service\"}"),
        Err(ProtobufError::MissingMagic)
    );
    assert_eq!(decode(b""), Err(ProtobufError::MissingMagic));
}

#[test]
fn kinds_without_a_protobuf_message_are_refused_by_name() {
    assert_eq!(
        decode(&envelope("batch/v1", "Job", &meta("j"))),
        Err(ProtobufError::UnsupportedKind {
            api_version: "batch/v1".into(),
            kind: "Job".into()
        })
    );
    assert_eq!(
        decode(&envelope("v1", "", &meta("j"))),
        Err(ProtobufError::MissingKind)
    );
    // Right kind, wrong group version.
    assert!(matches!(
        decode(&envelope("apps/v1", "Service", &meta("s"))),
        Err(ProtobufError::UnsupportedKind { .. })
    ));
}

#[test]
fn a_compressed_or_non_protobuf_envelope_is_refused() {
    let mut body = envelope("v1", "Namespace", &meta("n"));
    body.extend(text(3, "gzip"));
    assert_eq!(
        decode(&body),
        Err(ProtobufError::UnsupportedContentEncoding("gzip".into()))
    );
    let mut body = envelope("v1", "Namespace", &meta("n"));
    body.extend(text(4, "application/json"));
    assert_eq!(
        decode(&body),
        Err(ProtobufError::UnsupportedContentType(
            "application/json".into()
        ))
    );
}

#[test]
fn a_wrong_wire_type_names_the_field() {
    // spec.ports[0].port as a string.
    let port = [text(1, "http"), text(3, "80")].concat();
    let err = decode(&envelope(
        "v1",
        "Service",
        &[meta("s"), len(2, &len(1, &port))].concat(),
    ))
    .expect_err("fails");
    assert_eq!(
        err,
        ProtobufError::Malformed {
            path: "spec.ports[0].port".into(),
            reason: "length-delimited value where a varint was expected".into()
        }
    );
}

#[test]
fn invalid_utf8_in_a_string_names_the_field() {
    let err = decode(&envelope(
        "v1",
        "Namespace",
        &len(1, &len(1, &[0xff, 0xfe])),
    ))
    .expect_err("fails");
    assert!(
        matches!(&err, ProtobufError::Malformed { path, .. } if path == "metadata.name"),
        "{err}"
    );
}

#[test]
fn an_unknown_int_or_string_type_is_an_error() {
    let port = [int(3, 80), len(4, &int(1, 7))].concat();
    let err = decode(&envelope(
        "v1",
        "Service",
        &[meta("s"), len(2, &len(1, &port))].concat(),
    ))
    .expect_err("fails");
    assert!(
        matches!(&err, ProtobufError::Malformed { path, .. } if path == "spec.ports[0].targetPort"),
        "{err}"
    );
}

#[test]
fn nesting_beyond_the_limit_is_refused() {
    // No message Switchyard decodes contains itself, so the bound is exercised where every
    // nested message passes: one level past it fails, the level itself decodes.
    assert_eq!(
        decode::namespace_at_depth_for_tests(&[], MAX_DEPTH + 1),
        Err(ProtobufError::TooDeep(MAX_DEPTH))
    );
    assert_eq!(
        decode::namespace_at_depth_for_tests(&[], MAX_DEPTH),
        Ok(json!({}))
    );
    // Its metadata is one level further down.
    assert_eq!(
        decode::namespace_at_depth_for_tests(&meta("n"), MAX_DEPTH),
        Err(ProtobufError::TooDeep(MAX_DEPTH))
    );
}

#[test]
fn truncated_and_corrupted_bodies_fail_cleanly_and_never_panic() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (name, _) in FIXTURES {
        let (pb, _) = fixture(name);
        for cut in 0..pb.len() {
            // Every proper prefix: an error, or (rarely) a shorter valid body.
            let _ = decode(&pb[..cut]);
        }
        for _ in 0..300 {
            let mut bad = pb.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() % bad.len() as u64) as usize;
                bad[i] = next() as u8;
            }
            let _ = decode(&bad);
        }
    }
}
