use std::fmt::Write as _;

use super::*;
use proptest::prelude::*;

const ORDERS: &str = r"
apiVersion: gw/v1
kind: Api
metadata:
  name: orders
  labels: {team: checkout}
spec:
  displayName: Orders
  version: v1
  context: /orders/v1
  hosts: []
  groups: [default]
  upstream:
    endpoints:
      - url: http://127.0.0.1:9001/api
  operations:
    - {method: GET, path: '/items/{id}'}
    - {method: POST, path: /items}
  policies: []
";

fn fields(err: &ModelError) -> Vec<(String, String)> {
    err.field_errors()
        .iter()
        .map(|e| (e.field.clone(), e.message.clone()))
        .collect()
}

fn field_names(err: &ModelError) -> Vec<String> {
    fields(err).into_iter().map(|(f, _)| f).collect()
}

#[test]
fn parses_the_issue_example() {
    let api = ApiDefinition::parse(ORDERS.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(api.metadata.name, "orders");
    assert_eq!(api.metadata.labels["team"], "checkout");
    assert_eq!(api.spec.context, "/orders/v1");
    assert_eq!(api.spec.operations.len(), 2);
    assert_eq!(api.spec.upstream.timeouts, Timeouts::default());
}

#[test]
fn json_and_yaml_give_the_same_definition() {
    let from_yaml = ApiDefinition::parse(ORDERS.as_bytes(), Format::Yaml).unwrap();
    let json = serde_json::to_vec(&from_yaml.to_json()).unwrap();
    let from_json = ApiDefinition::parse(&json, Format::Json).unwrap();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn every_unknown_field_is_reported_with_its_path() {
    let doc = ORDERS
        .replace(
            "  displayName: Orders",
            "  displayName: Orders\n  colour: red",
        )
        .replace(
            "      - url: http://127.0.0.1:9001/api",
            "      - url: http://127.0.0.1:9001/api\n        wieght: 3",
        )
        .replace("kind: Api", "kind: Api\nstatus: {}");
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    let mut got = field_names(&err);
    got.sort();
    assert_eq!(
        got,
        vec!["spec.colour", "spec.upstream.endpoints[0].wieght", "status"]
    );
    assert!(fields(&err).iter().all(|(_, m)| m == "unknown field"));
}

#[test]
fn semantic_errors_are_all_collected() {
    let doc = r"
apiVersion: gw/v2
kind: Api
metadata: {name: Bad_Name}
spec:
  context: orders
  hosts: ['bad host', 'ok.example.com', 'ok.example.com']
  groups: [default, default]
  upstream:
    endpoints:
      - url: not a url
      - url: ftp://example.com
      - url: http://user:pw@example.com
      - url: http://example.com/base?q=1
    timeouts: {connect: 0s, request: 2h}
  operations:
    - {method: FETCH, path: /a}
    - {method: GET, path: '/items/{id}'}
    - {method: GET, path: '/items/{id}'}
    - {method: GET, path: '/items/{key}'}
    - {method: GET, path: 'no-slash'}
    - {method: GET, path: '/x{y}'}
  policies: [{name: mystery}]
";
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    let got = field_names(&err);
    let expected = [
        "apiVersion",
        "metadata.name",
        "spec.context",
        "spec.hosts[0]",
        "spec.hosts[2]",
        "spec.groups[1]",
        "spec.upstream.endpoints[0].url",
        "spec.upstream.endpoints[1].url",
        "spec.upstream.endpoints[2].url",
        "spec.upstream.endpoints[3].url",
        "spec.upstream.timeouts.connect",
        "spec.upstream.timeouts.request",
        "spec.operations[0].method",
        "spec.operations[2]",
        "spec.operations[3].path",
        "spec.operations[4].path",
        "spec.operations[5].path",
        "spec.policies[0].name",
    ];
    for field in expected {
        assert!(
            got.iter().any(|g| g == field),
            "missing error for {field}: {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "unexpected errors: {got:#?}");
}

#[test]
fn missing_and_mistyped_fields_name_their_path() {
    let missing =
        "apiVersion: gw/v1\nkind: Api\nmetadata: {name: a}\nspec: {upstream: {endpoints: []}}\n";
    let err = ApiDefinition::parse(missing.as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(
        fields(&err),
        vec![(
            "spec.context".to_string(),
            "required field is missing".to_string()
        )]
    );

    let mistyped = ORDERS.replace("hosts: []", "hosts: 5");
    let err = ApiDefinition::parse(mistyped.as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(field_names(&err), vec!["spec.hosts"]);
}

#[test]
fn syntax_errors_and_oversize_documents() {
    let err = ApiDefinition::parse(b"spec: [unclosed", Format::Yaml).unwrap_err();
    assert!(
        matches!(err, ModelError::Syntax { format: "YAML", .. }),
        "{err}"
    );
    let err = ApiDefinition::parse(b"{\"a\":", Format::Json).unwrap_err();
    assert!(
        matches!(err, ModelError::Syntax { format: "JSON", .. }),
        "{err}"
    );
    let err = ApiDefinition::parse(b"", Format::Yaml).unwrap_err();
    assert!(matches!(err, ModelError::Syntax { .. }), "{err}");
    let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    let err = ApiDefinition::parse(&big, Format::Yaml).unwrap_err();
    assert!(matches!(err, ModelError::TooLarge { .. }), "{err}");
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        let refs = vec![format!("*a{prev}"); 10].join(", ");
        writeln!(doc, "a{i}: &a{i} [{refs}]").unwrap();
    }
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    assert!(matches!(err, ModelError::Syntax { .. }), "{err}");
}

#[test]
fn canonical_form() {
    let doc = ORDERS
        .replace("context: /orders/v1", "context: /orders/v1/")
        .replace("hosts: []", "hosts: [API.Example.com]")
        .replace("method: GET", "method: get")
        .replace("9001/api", "9001/api/");
    let api = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(api.spec.context, "/orders/v1");
    assert_eq!(api.spec.hosts, vec!["api.example.com"]);
    assert_eq!(api.spec.operations[0].method, "GET");
    assert_eq!(
        api.spec.upstream.endpoints[0].url,
        "http://127.0.0.1:9001/api"
    );
}

#[test]
fn collisions_within_a_group_and_host() {
    let base = ApiDefinition::parse(ORDERS.as_bytes(), Format::Yaml).unwrap();
    let mut same = base.clone();
    same.metadata.name = "orders-copy".into();
    let mut other_group = same.clone();
    other_group.metadata.name = "orders-staging".into();
    other_group.spec.groups = vec!["staging".into()];
    let mut other_host = same.clone();
    other_host.metadata.name = "orders-host".into();
    other_host.spec.hosts = vec!["api.example.com".into()];

    let collisions = check_collisions([&base, &same]);
    assert_eq!(collisions.len(), 1);
    assert_eq!(collisions[0].existing, "orders");
    assert_eq!(collisions[0].other, "orders-copy");
    assert!(check_collisions([&base, &other_group, &other_host]).is_empty());
}

#[test]
fn contexts_collide_when_their_case_folds_are_equal() {
    let base = ApiDefinition::parse(ORDERS.as_bytes(), Format::Yaml).unwrap();
    let variant = |name: &str, context: &str, case_insensitive: bool| {
        let mut api = base.clone();
        api.metadata.name = name.into();
        api.spec.context = context.into();
        api.spec.case_insensitive = case_insensitive;
        api
    };
    let upper = variant("upper", "/Orders/V1", false);
    let dotted = variant("dotted", "/orders/v1.", true);
    let other = variant("other", "/orders/v2", true);
    let collisions = check_collisions([&base, &upper, &dotted, &other]);
    let others: Vec<&str> = collisions.iter().map(|c| c.other.as_str()).collect();
    assert_eq!(others, ["upper", "dotted"]);
    assert_eq!(collisions[0].key.context, "/orders/v1");
    assert_eq!(base.route_keys()[0].context, "/orders/v1");
}

#[test]
fn case_insensitive_apis_parse_and_fold_their_operations() {
    let doc = ORDERS.replace("  hosts: []", "  hosts: []\n  caseInsensitive: true");
    let api = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap();
    assert!(api.spec.case_insensitive);
    assert_eq!(api.to_json()["spec"]["caseInsensitive"], true);
    // false is the default, and not written
    let plain = ApiDefinition::parse(ORDERS.as_bytes(), Format::Yaml).unwrap();
    assert!(plain.to_json()["spec"].get("caseInsensitive").is_none());
    // operations that differ only in case are one path of a case-insensitive API
    let twice = doc.replace(
        "    - {method: POST, path: /items}",
        "    - {method: POST, path: /items}\n    - {method: POST, path: /ITEMS}\n    - {method: PUT, path: /Items.}",
    );
    let err = ApiDefinition::parse(twice.as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(field_names(&err), ["spec.operations[2]"], "{err}");
    assert!(
        ApiDefinition::parse(
            twice.replace("  caseInsensitive: true\n", "").as_bytes(),
            Format::Yaml
        )
        .is_ok()
    );
}

#[test]
fn semicolons_are_refused_in_contexts_and_operation_paths() {
    let doc = ORDERS
        .replace("context: /orders/v1", "context: /orders;v=1")
        .replace("path: /items}", "path: '/items;x'}");
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    let found = fields(&err);
    assert_eq!(
        found.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["spec.context", "spec.operations[1].path"],
        "{err}"
    );
    assert!(found.iter().all(|(_, m)| m.contains("path parameters")));
}

#[test]
fn schema_describes_the_model() {
    let schema = schema::api_schema();
    let spec = &schema["$defs"]["ApiSpec"];
    assert_eq!(spec["additionalProperties"], false);
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(required.contains(&"context"));
    assert!(required.contains(&"upstream"));
    assert!(!required.contains(&"groups"));
}

proptest! {
    /// Validation never panics, whatever the strings in the document.
    #[test]
    fn validation_never_panics(
        name in ".{0,80}", context in ".{0,40}", host in ".{0,40}", url in ".{0,60}",
        method in "[A-Za-z]{0,8}", path in ".{0,40}",
    ) {
        let doc = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Api",
            "metadata": {"name": name},
            "spec": {
                "context": context, "hosts": [host],
                "upstream": {"endpoints": [{"url": url}]},
                "operations": [{"method": method, "path": path}],
            }
        });
        let _ = ApiDefinition::parse(doc.to_string().as_bytes(), Format::Json);
    }

    /// A valid definition survives a JSON round trip unchanged.
    #[test]
    fn valid_definitions_round_trip(
        name in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        segments in proptest::collection::vec("[a-z0-9_.~-]{1,8}", 1..4),
        port in 1u16..,
    ) {
        let context = format!("/{}", segments.join("/"));
        prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
        let doc = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Api",
            "metadata": {"name": name},
            "spec": {"context": context, "upstream": {"endpoints": [{"url": format!("http://127.0.0.1:{port}/x")}]}}
        });
        let api = ApiDefinition::parse(doc.to_string().as_bytes(), Format::Json).unwrap();
        let again = ApiDefinition::parse(api.to_json().to_string().as_bytes(), Format::Json).unwrap();
        prop_assert_eq!(api, again);
    }
}

#[test]
fn sets_of_documents() {
    let two = format!(
        "{ORDERS}---\n{}",
        ORDERS
            .replace("name: orders", "name: users")
            .replace("/orders/v1", "/users")
    );
    let apis = parse_set(two.as_bytes(), Format::Yaml, &ValidationContext::default())
        .unwrap()
        .apis;
    assert_eq!(apis.len(), 2);

    let json = serde_json::to_vec(&[apis[0].to_json(), apis[1].to_json()]).unwrap();
    assert_eq!(
        parse_set(&json, Format::Json, &ValidationContext::default())
            .unwrap()
            .apis,
        apis
    );

    let clash = format!(
        "{ORDERS}---\n{}",
        ORDERS
            .replace("name: orders", "name: copy")
            .replace("hosts: []", "hosts: 3")
    );
    let err = parse_set(
        clash.as_bytes(),
        Format::Yaml,
        &ValidationContext::default(),
    )
    .unwrap_err();
    assert_eq!(field_names(&err), vec!["documents[1].spec.hosts"]);

    let dup = format!("{ORDERS}---\n{ORDERS}");
    let err = parse_set(dup.as_bytes(), Format::Yaml, &ValidationContext::default()).unwrap_err();
    assert_eq!(field_names(&err), vec!["documents[1].metadata.name"]);

    let collide = format!(
        "{ORDERS}---\n{}",
        ORDERS.replace("name: orders", "name: copy")
    );
    let err = parse_set(
        collide.as_bytes(),
        Format::Yaml,
        &ValidationContext::default(),
    )
    .unwrap_err();
    let got = fields(&err);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains("both claim context"), "{got:?}");
}

/// The fields of `schema` that `doc` does not name, as a field (`kind`, `spec.context`) or as
/// the parent of one (`spec.upstream.…`).
fn undocumented(schema: &serde_json::Value, doc: &str) -> Vec<String> {
    fn properties(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                for v in map.values() {
                    properties(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| properties(v, out)),
            _ => {}
        }
    }
    let mut fields = std::collections::BTreeSet::new();
    properties(schema, &mut fields);
    assert!(fields.len() > 10, "{fields:?}");
    fields
        .into_iter()
        .filter(|f| {
            let spellings = [
                format!("`{f}`"),
                format!(".{f}`"),
                format!("`{f}."),
                format!(".{f}."),
            ];
            !spellings.iter().any(|s| doc.contains(s.as_str()))
        })
        .collect()
}

/// Every field of the served schemas is described in the documentation.
#[test]
fn the_documentation_covers_every_schema_field() {
    for (schema, doc, path) in [
        (
            schema::api_schema(),
            include_str!("../../../docs/api-definition.md"),
            "docs/api-definition.md",
        ),
        (
            schema::consumer_schema(),
            include_str!("../../../docs/consumers.md"),
            "docs/consumers.md",
        ),
    ] {
        let missing = undocumented(&schema, doc);
        assert!(missing.is_empty(), "not documented in {path}: {missing:?}");
    }
}

fn with_upstream(upstream: &str) -> String {
    ORDERS.replace(
        "  upstream:\n    endpoints:\n      - url: http://127.0.0.1:9001/api\n",
        upstream,
    )
}

#[test]
fn upstream_behaviour_parses() {
    let doc = with_upstream(
        r"  upstream:
    endpoints:
      - {url: 'http://127.0.0.1:9001/api', weight: 3}
      - url: http://backend.internal:9002
    loadBalancing: {algorithm: consistent-hash, hashOn: {cookie: session}}
    timeouts: {idle: 5s}
    retries: {attempts: 2, statuses: [502, 503], budgetPercent: 50, minPerSecond: 1}
    outlierDetection: {consecutiveFailures: 3, baseEjection: 1s, maxEjection: 4s, maxEjectedPercent: 100}
    healthCheck: {path: /healthz?deep=1, interval: 1s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 2}
    circuitBreaker: {maxConnections: 10, maxPending: 0}
    dnsRefresh: 5s
    hostHeader: {rewrite: orders.internal}
",
    );
    let api = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap();
    let up = &api.spec.upstream;
    assert_eq!(up.endpoints[0].weight, 3);
    assert_eq!(up.endpoints[1].weight, 1);
    assert_eq!(up.load_balancing.algorithm, Algorithm::ConsistentHash);
    assert_eq!(
        up.load_balancing.hash_on,
        Some(HashOn::Cookie("session".into()))
    );
    assert_eq!(up.timeouts.idle, HumanDuration::from_secs(5));
    assert_eq!(up.timeouts.connect, HumanDuration::from_secs(5));
    assert_eq!(up.retries.statuses, vec![502, 503]);
    assert_eq!(up.outlier_detection.max_ejected_percent, 100);
    assert_eq!(up.health_check.as_ref().unwrap().healthy_threshold, 1);
    assert_eq!(up.circuit_breaker.max_pending, 0);
    assert_eq!(
        up.host_header,
        HostHeader::Rewrite("orders.internal".into())
    );
    // the canonical JSON parses back to the same definition
    let json = serde_json::to_vec(&api.to_json()).unwrap();
    assert_eq!(ApiDefinition::parse(&json, Format::Json).unwrap(), api);

    let doc = with_upstream(
        "  upstream:\n    endpoints: [{url: 'http://127.0.0.1:9001'}]\n    loadBalancing: {algorithm: consistent-hash, hashOn: clientIp}\n    hostHeader: preserve\n",
    );
    let api = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(
        api.spec.upstream.load_balancing.hash_on,
        Some(HashOn::ClientIp)
    );
    assert_eq!(api.spec.upstream.host_header, HostHeader::Preserve);
}

#[test]
fn upstream_behaviour_errors_are_all_reported() {
    let doc = with_upstream(
        r"  upstream:
    endpoints:
      - {url: 'http://127.0.0.1:9001', weight: 0}
      - {url: 'http://127.0.0.1:9001', weight: 1001}
    loadBalancing: {algorithm: consistent-hash}
    timeouts: {idle: 0s}
    retries: {attempts: 6, statuses: [500], budgetPercent: 101}
    outlierDetection: {baseEjection: 10m, maxEjection: 1m, maxEjectedPercent: 101}
    healthCheck: {path: healthz, interval: 0s, healthyThreshold: 0}
    circuitBreaker: {maxConnections: 0}
    hostHeader: {rewrite: 'a b'}
",
    );
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(
        field_names(&err),
        vec![
            "spec.upstream.endpoints[0].weight",
            "spec.upstream.endpoints[1].url",
            "spec.upstream.endpoints[1].weight",
            "spec.upstream.timeouts.idle",
            "spec.upstream.loadBalancing.hashOn",
            "spec.upstream.retries.attempts",
            "spec.upstream.retries.statuses[0]",
            "spec.upstream.retries.budgetPercent",
            "spec.upstream.outlierDetection.maxEjection",
            "spec.upstream.outlierDetection.maxEjectedPercent",
            "spec.upstream.healthCheck.path",
            "spec.upstream.healthCheck.interval",
            "spec.upstream.healthCheck.healthyThreshold",
            "spec.upstream.hostHeader.rewrite",
            "spec.upstream.circuitBreaker.maxConnections",
        ]
    );

    let doc = with_upstream(
        "  upstream:\n    endpoints: [{url: 'http://127.0.0.1:9001'}]\n    loadBalancing: {hashOn: {header: 'bad header'}}\n",
    );
    let err = ApiDefinition::parse(doc.as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(
        field_names(&err),
        vec!["spec.upstream.loadBalancing.hashOn"]
    );
}

fn certificate_value(cert: &str, key: &str, sni: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gw/v1",
        "kind": "Certificate",
        "metadata": {"name": "site"},
        "spec": {"certificate": cert, "privateKey": key, "sni": sni},
    })
}

fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn certificates_are_validated_with_field_paths() {
    let (cert, key) = self_signed(&["Api.Example.com"]);
    let ok =
        CertificateDefinition::from_value_validated(&certificate_value(&cert, &key, &[])).unwrap();
    let parsed = ok.parse_pem().unwrap();
    assert_eq!(parsed.dns_names, ["api.example.com"]);
    assert_eq!(ok.server_names(&parsed), ["api.example.com"]);
    assert_eq!(ok.spec.groups, ["default"]);
    assert!(ok.to_public_json()["spec"].get("privateKey").is_none());
    assert!(
        !format!("{ok:?}").contains("PRIVATE KEY"),
        "Debug shows no key"
    );

    let fields = |value: serde_json::Value| -> Vec<String> {
        CertificateDefinition::from_value_validated(&value)
            .unwrap_err()
            .field_errors()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    };
    let (_, other_key) = self_signed(&["b.test"]);
    assert_eq!(
        fields(certificate_value(&cert, &other_key, &[])),
        ["spec.privateKey"]
    );
    assert_eq!(
        fields(certificate_value("not pem", &key, &[])),
        ["spec.certificate"]
    );
    assert_eq!(
        fields(certificate_value(&cert, "", &[])),
        ["spec.privateKey"]
    );
    assert_eq!(
        fields(certificate_value(&cert, &key, &["bad name!", "*"])),
        ["spec.sni[0]"]
    );
    // a certificate without DNS names needs its server names listed
    let (ip_only, ip_key) = self_signed(&["127.0.0.1"]);
    assert_eq!(
        fields(certificate_value(&ip_only, &ip_key, &[])),
        ["spec.sni"]
    );
    assert!(
        CertificateDefinition::from_value_validated(&certificate_value(&ip_only, &ip_key, &["*"]))
            .is_ok()
    );
    let mut unknown = certificate_value(&cert, &key, &[]);
    unknown["spec"]["passphrase"] = "x".into();
    assert_eq!(fields(unknown), ["spec.passphrase"]);
}

#[test]
fn a_set_holds_apis_and_certificates() {
    let (cert, key) = self_signed(&["a.test"]);
    let text = format!(
        "{}\n---\n{}\n---\n{}\n",
        "apiVersion: gw/v1\nkind: Api\nmetadata: {name: site}\nspec:\n  context: /a\n  upstream:\n    endpoints: [{url: 'https://a.internal'}]\n    tls: {serverName: a.internal}",
        certificate_value(&cert, &key, &[]),
        certificate_value(&cert, &key, &[]),
    );
    let err = parse_set(text.as_bytes(), Format::Yaml, &ValidationContext::default()).unwrap_err();
    assert_eq!(err.field_errors().len(), 1, "{err}");
    assert_eq!(err.field_errors()[0].field, "documents[2].metadata.name");

    let first_two: Vec<&str> = text.split("\n---\n").take(2).collect();
    let set = parse_set(
        first_two.join("\n---\n").as_bytes(),
        Format::Yaml,
        &ValidationContext::default(),
    )
    .unwrap();
    assert_eq!((set.apis.len(), set.certificates.len()), (1, 1));
    // an API and a certificate may share a name
    assert_eq!(set.apis[0].metadata.name, set.certificates[0].metadata.name);
}

#[test]
fn upstream_tls_needs_an_https_endpoint_and_valid_fields() {
    let yaml = |url: &str, tls: &str| {
        format!(
            "apiVersion: gw/v1\nkind: Api\nmetadata: {{name: a}}\nspec:\n  context: /a\n  upstream:\n    endpoints: [{{url: '{url}'}}]\n    tls: {tls}\n"
        )
    };
    let fields = |text: String| -> Vec<String> {
        ApiDefinition::parse(text.as_bytes(), Format::Yaml).map_or_else(
            |e| e.field_errors().iter().map(|f| f.field.clone()).collect(),
            |_| Vec::new(),
        )
    };
    assert!(fields(yaml("https://a.internal:8443/base", "{}")).is_empty());
    assert_eq!(
        fields(yaml("http://a.internal", "{}")),
        ["spec.upstream.tls"]
    );
    assert_eq!(
        fields(yaml("https://a.internal", "{ca: 'not pem'}")),
        ["spec.upstream.tls.ca"]
    );
    assert_eq!(
        fields(yaml("https://a.internal", "{serverName: 'bad name'}")),
        ["spec.upstream.tls.serverName"]
    );
    assert_eq!(
        fields(yaml("https://a.internal", "{clientCertificate: Bad_Name}")),
        ["spec.upstream.tls.clientCertificate"]
    );
    assert_eq!(
        fields(yaml("ftp://a.internal", "{}")),
        ["spec.upstream.endpoints[0].url", "spec.upstream.tls"]
    );
}

fn consumer_yaml(name: &str, credential: &str) -> String {
    format!(
        "apiVersion: gw/v1\nkind: Consumer\nmetadata: {{name: {name}}}\nspec:\n  credentials: [{credential}]\n"
    )
}

#[test]
fn a_set_holds_consumers_with_clear_secrets() {
    let alice = consumer_yaml(
        "alice",
        "{type: api-key, id: k, key: shared-key-0123456789}",
    );
    let set = parse_set(
        format!("{ORDERS}---\n{alice}").as_bytes(),
        Format::Yaml,
        &ValidationContext::default(),
    )
    .unwrap();
    assert_eq!((set.apis.len(), set.consumers.len()), (1, 1));
    assert!(!set.consumers[0].is_sealed(), "sealing is the caller's");

    // a name used twice, a key missing
    let missing = consumer_yaml("carol", "{type: api-key, id: k}");
    let text = format!("{alice}---\n{alice}---\n{missing}");
    let err = parse_set(text.as_bytes(), Format::Yaml, &ValidationContext::default()).unwrap_err();
    assert_eq!(
        fields(&err)
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>(),
        [
            "documents[2].spec.credentials[0].key",
            "documents[1].metadata.name",
        ],
        "{err}"
    );
    assert!(!err.to_string().contains("shared-key"), "{err}");
}

#[test]
fn redacted_errors_do_not_quote_the_document() {
    let text = "kind: Consumer\nspec: [\n  key: very-secret-value\n";
    let err = parse_value(text.as_bytes(), Format::Yaml).unwrap_err();
    let redacted = err.clone().redacted().to_string();
    assert!(redacted.contains("line"), "{redacted}");
    assert!(!redacted.contains("very-secret-value"), "{redacted}");

    let value = serde_json::json!({
        "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "a"},
        "spec": {"credentials": [{"type": "basic-auth", "id": "b", "username": "a", "password": 12_345_678}]}
    });
    let err = ConsumerDefinition::from_value_validated(&value, false).unwrap_err();
    assert!(
        err.to_string().contains("12345678"),
        "serde quotes the value: {err}"
    );
    let redacted = err.redacted();
    assert_eq!(
        fields(&redacted),
        [(
            "spec.credentials[0].password".to_string(),
            "must be a string".to_string()
        )]
    );
}
