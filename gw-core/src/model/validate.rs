//! Validation of one API definition, and of a set of them (route collisions).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    API_VERSION, Algorithm, ApiDefinition, CertificateDefinition, FieldError, HashOn, HostHeader,
    HumanDuration, KIND_API, KIND_CERTIFICATE, PolicyRef,
};

/// Limits that keep one definition from costing the gateway unbounded memory or build time.
const MAX_HOSTS: usize = 100;
const MAX_GROUPS: usize = 32;
const MAX_ENDPOINTS: usize = 64;
const MAX_WEIGHT: u32 = 1000;
const MAX_BODY_LIMIT: u64 = 1 << 40;
const MAX_OPERATIONS: usize = 1000;
const MAX_POLICIES: usize = 64;
const MAX_LABELS: usize = 64;
const MAX_PATH_LEN: usize = 1024;
const MAX_TEXT_LEN: usize = 256;

/// The methods an operation may name.
pub(crate) const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// What validation may consult beyond the document itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidationContext<'a> {
    /// The policies that can be attached (usually a [`crate::policy::PolicyRegistry`]);
    /// with `None`, any policy is reported unknown.
    pub policies: Option<&'a dyn PolicyCatalog>,
}

/// What validating an API needs to know of the policies that may be attached to it:
/// which exist, in which phase each runs, and what is wrong with its params. Validation
/// knows policies only through this trait; [`crate::policy::PolicyRegistry`] implements it.
pub trait PolicyCatalog: std::fmt::Debug + Sync {
    /// Whether a policy `name` exists.
    fn contains(&self, name: &str) -> bool;

    /// Why `name` is refused when [`PolicyCatalog::contains`] says it does not exist: the
    /// message of the error on the policy's `name` field.
    fn unknown(&self, name: &str) -> String;

    /// The name of the phase `policy` runs in with its params: a policy may be listed once
    /// per phase.
    fn phase_name(&self, policy: &PolicyRef) -> &'static str;

    /// Every problem in the params of `policy` (known), attached at `at`, with field paths
    /// relative to its params (empty when they are valid).
    fn check_params(&self, policy: &PolicyRef, at: &Attachment<'_>) -> Vec<FieldError>;

    /// The fields of the params of `policy` that hold secrets, relative to its params
    /// (see [`super::secret`]); none by default, and none for a policy it does not know.
    fn secret_params(&self, policy: &PolicyRef) -> Vec<super::secret::SecretField> {
        let _ = policy;
        Vec::new()
    }
}

/// Where a policy is attached, as validation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// The API's name.
    pub api: &'a str,
    /// The API's context path.
    pub context: &'a str,
    /// The operation's method (upper case) and path template, for a policy of an
    /// operation.
    pub operation: Option<(&'a str, &'a str)>,
}

/// A place an API occupies in the routing table: a context on a host within a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Gateway group.
    pub group: String,
    /// Host name, or `*` for an API that serves any host.
    pub host: String,
    /// The API's context, case-folded ([`crate::path::case_fold`]): `/App/Admin.` and
    /// `/app/admin` are one place.
    pub context: String,
}

/// Two APIs that claim the same [`RouteKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The contested place.
    pub key: RouteKey,
    /// The API that holds it.
    pub existing: String,
    /// The API that also claims it.
    pub other: String,
}

pub(super) fn route_keys(api: &ApiDefinition) -> Vec<RouteKey> {
    let spec = &api.spec;
    let context = crate::path::case_fold(&spec.context).into_owned();
    let mut keys = Vec::with_capacity(spec.groups.len() * spec.hosts.len().max(1));
    for group in &spec.groups {
        if spec.hosts.is_empty() {
            keys.push(RouteKey {
                group: group.clone(),
                host: "*".to_string(),
                context: context.clone(),
            });
        }
        for host in &spec.hosts {
            keys.push(RouteKey {
                group: group.clone(),
                host: host.clone(),
                context: context.clone(),
            });
        }
    }
    keys
}

/// Finds the APIs of a set that share a context on one host within a group.
pub fn check_collisions<'a>(apis: impl IntoIterator<Item = &'a ApiDefinition>) -> Vec<Collision> {
    let mut owners: HashMap<RouteKey, &str> = HashMap::new();
    let mut collisions = Vec::new();
    for api in apis {
        for key in api.route_keys() {
            if let Some(existing) = owners.get(&key) {
                if *existing != api.metadata.name {
                    collisions.push(Collision {
                        key,
                        existing: (*existing).to_string(),
                        other: api.metadata.name.clone(),
                    });
                }
            } else {
                owners.insert(key, &api.metadata.name);
            }
        }
    }
    collisions
}

/// Checks a name as used for APIs and groups: 1 to 63 characters, lowercase ASCII letters,
/// digits and `-`, starting and ending with a letter or a digit (a DNS label).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.len() > 63 {
        return Err(format!(
            "is {} characters long; the limit is 63",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !bytes.iter().all(|&b| ok_char(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(format!(
            "{name:?} is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Validates one definition and returns every problem found (empty when it is valid).
///
/// The definition should be canonical ([`ApiDefinition::canonicalize`]), as
/// [`ApiDefinition::parse`] makes it.
pub fn validate(api: &ApiDefinition, ctx: &ValidationContext<'_>) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.document(
        &api.api_version,
        (&api.kind, KIND_API),
        &api.metadata,
        &api.spec.groups,
    );

    let spec = &api.spec;
    v.text("spec.displayName", spec.display_name.as_deref());
    v.text("spec.version", spec.version.as_deref());
    v.context(&spec.context);
    v.hosts(&spec.hosts);
    v.endpoints(api);
    v.timeouts(api);
    v.upstream_behaviour(api);
    if let Some(limit) = spec.max_request_body_bytes
        && !(1..=MAX_BODY_LIMIT).contains(&limit)
    {
        v.err(
            "spec.maxRequestBodyBytes",
            format!("must be between 1 and {MAX_BODY_LIMIT} (1 TiB)"),
        );
    }
    let attached = Attachment {
        api: &api.metadata.name,
        context: &spec.context,
        operation: None,
    };
    v.operations(api, *ctx, &attached);
    v.policies("spec.policies", &spec.policies, *ctx, &attached);
    v.errors
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// The parts every resource document shares: `apiVersion`, `kind` (against the
    /// expected one), `metadata` and `spec.groups`.
    fn document(
        &mut self,
        api_version: &str,
        (kind, expected): (&str, &str),
        metadata: &super::Metadata,
        groups: &[String],
    ) {
        if api_version != API_VERSION {
            self.err(
                "apiVersion",
                format!("unsupported version {api_version:?}; expected {API_VERSION:?}"),
            );
        }
        if kind != expected {
            self.err(
                "kind",
                format!("unsupported kind {kind:?}; expected {expected:?}"),
            );
        }
        if let Err(message) = validate_name(&metadata.name) {
            self.err("metadata.name", message);
        }
        self.labels(&metadata.labels);
        self.groups(groups);
    }

    fn text(&mut self, field: &str, value: Option<&str>) {
        if let Some(value) = value {
            if value.len() > MAX_TEXT_LEN {
                self.err(field, format!("longer than {MAX_TEXT_LEN} bytes"));
            }
            if value.chars().any(char::is_control) {
                self.err(field, "must not contain control characters");
            }
        }
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>) {
        if labels.len() > MAX_LABELS {
            self.err("metadata.labels", format!("more than {MAX_LABELS} labels"));
        }
        for (key, value) in labels {
            let field = format!("metadata.labels.{key}");
            let key_ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
            if !key_ok {
                self.err(
                    field.clone(),
                    "label keys are 1 to 253 characters: letters, digits, '-', '_', '.' and '/'",
                );
            }
            self.text(&field, Some(value));
        }
    }

    fn context(&mut self, context: &str) {
        const FIELD: &str = "spec.context";
        if !context.starts_with('/') {
            self.err(FIELD, "must start with '/'");
            return;
        }
        if context.len() > MAX_PATH_LEN {
            self.err(FIELD, format!("longer than {MAX_PATH_LEN} bytes"));
            return;
        }
        if context == "/" {
            return;
        }
        for segment in context[1..].split('/') {
            if segment.is_empty() {
                self.err(FIELD, "must not contain empty segments ('//')");
                return;
            }
            if segment == "." || segment == ".." {
                self.err(FIELD, "must not contain '.' or '..' segments");
                return;
            }
            if segment.contains(';') {
                self.err(FIELD, PARAMETERS_IGNORED);
                return;
            }
            if let Some(bad) = segment.chars().find(|&c| !is_path_char(c)) {
                self.err(
                    FIELD,
                    format!(
                        "character {bad:?} is not allowed: use letters, digits and -._~!$&'()*+,;=:@"
                    ),
                );
                return;
            }
        }
    }

    fn hosts(&mut self, hosts: &[String]) {
        if hosts.len() > MAX_HOSTS {
            self.err("spec.hosts", format!("more than {MAX_HOSTS} hosts"));
        }
        let mut seen = HashSet::new();
        for (i, host) in hosts.iter().enumerate() {
            let field = format!("spec.hosts[{i}]");
            if let Err(message) = check_host(host) {
                self.err(field, message);
            } else if !seen.insert(host.as_str()) {
                self.err(field, format!("host {host:?} is listed twice"));
            }
        }
    }

    fn groups(&mut self, groups: &[String]) {
        if groups.is_empty() {
            self.err("spec.groups", "must name at least one gateway group");
        }
        if groups.len() > MAX_GROUPS {
            self.err("spec.groups", format!("more than {MAX_GROUPS} groups"));
        }
        let mut seen = HashSet::new();
        for (i, group) in groups.iter().enumerate() {
            let field = format!("spec.groups[{i}]");
            if let Err(message) = validate_name(group) {
                self.err(field, message);
            } else if !seen.insert(group.as_str()) {
                self.err(field, format!("group {group:?} is listed twice"));
            }
        }
    }

    fn endpoints(&mut self, api: &ApiDefinition) {
        let endpoints = &api.spec.upstream.endpoints;
        if endpoints.is_empty() {
            self.err("spec.upstream.endpoints", "must list at least one endpoint");
        }
        if endpoints.len() > MAX_ENDPOINTS {
            self.err(
                "spec.upstream.endpoints",
                format!("more than {MAX_ENDPOINTS} endpoints"),
            );
        }
        let mut seen = HashSet::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            if let Err(message) = check_endpoint_url(&endpoint.url) {
                self.err(format!("spec.upstream.endpoints[{i}].url"), message);
            } else if !seen.insert(endpoint.url.as_str()) {
                self.err(
                    format!("spec.upstream.endpoints[{i}].url"),
                    "is listed twice; give the endpoint a larger weight instead",
                );
            }
            if !(1..=MAX_WEIGHT).contains(&endpoint.weight) {
                self.err(
                    format!("spec.upstream.endpoints[{i}].weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
        }
    }

    fn timeouts(&mut self, api: &ApiDefinition) {
        let upstream = &api.spec.upstream;
        let t = &upstream.timeouts;
        self.duration("spec.upstream.timeouts.connect", t.connect, 300);
        self.duration("spec.upstream.timeouts.request", t.request, 3600);
        self.duration("spec.upstream.timeouts.idle", t.idle, 3600);
        self.duration("spec.upstream.dnsRefresh", upstream.dns_refresh, 86_400);
    }

    /// A duration that must be positive and at most `max_secs`.
    fn duration(&mut self, field: &str, value: HumanDuration, max_secs: u64) {
        let value = value.as_duration();
        if value.is_zero() {
            self.err(field, "must be greater than zero");
        } else if value.as_secs() > max_secs
            || (value.as_secs() == max_secs && value.subsec_nanos() > 0)
        {
            self.err(
                field,
                format!("must be at most {}", HumanDuration::from_secs(max_secs)),
            );
        }
    }

    /// A count that must lie in `range`.
    fn count(&mut self, field: &str, value: u32, range: std::ops::RangeInclusive<u32>) {
        if !range.contains(&value) {
            self.err(
                field,
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
    }

    fn upstream_behaviour(&mut self, api: &ApiDefinition) {
        let upstream = &api.spec.upstream;
        let lb = &upstream.load_balancing;
        match (lb.algorithm, &lb.hash_on) {
            (Algorithm::ConsistentHash, None) => self.err(
                "spec.upstream.loadBalancing.hashOn",
                "consistent-hash needs hashOn: {header: NAME}, {cookie: NAME} or clientIp",
            ),
            (Algorithm::ConsistentHash, Some(HashOn::Header(name))) => {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.err(
                        "spec.upstream.loadBalancing.hashOn.header",
                        format!("{name:?} is not a valid header name"),
                    );
                }
            }
            (Algorithm::ConsistentHash, Some(HashOn::Cookie(name))) => {
                if name.is_empty() || name.len() > MAX_TEXT_LEN || !name.bytes().all(is_token_byte)
                {
                    self.err(
                        "spec.upstream.loadBalancing.hashOn.cookie",
                        format!("{name:?} is not a valid cookie name"),
                    );
                }
            }
            (Algorithm::ConsistentHash, Some(HashOn::ClientIp)) | (_, None) => {}
            (_, Some(_)) => self.err(
                "spec.upstream.loadBalancing.hashOn",
                "is only used by the consistent-hash algorithm",
            ),
        }

        let retries = &upstream.retries;
        self.count("spec.upstream.retries.attempts", retries.attempts, 0..=5);
        for (i, status) in retries.statuses.iter().enumerate() {
            if ![502, 503, 504].contains(status) {
                self.err(
                    format!("spec.upstream.retries.statuses[{i}]"),
                    format!("{status} cannot be retried; use 502, 503 or 504"),
                );
            }
        }
        self.count(
            "spec.upstream.retries.budgetPercent",
            retries.budget_percent,
            0..=100,
        );
        self.count(
            "spec.upstream.retries.minPerSecond",
            retries.min_per_second,
            0..=10_000,
        );

        let outlier = &upstream.outlier_detection;
        self.count(
            "spec.upstream.outlierDetection.consecutiveFailures",
            outlier.consecutive_failures,
            0..=1000,
        );
        self.duration(
            "spec.upstream.outlierDetection.baseEjection",
            outlier.base_ejection,
            3600,
        );
        self.duration(
            "spec.upstream.outlierDetection.maxEjection",
            outlier.max_ejection,
            86_400,
        );
        if outlier.max_ejection < outlier.base_ejection {
            self.err(
                "spec.upstream.outlierDetection.maxEjection",
                "must not be shorter than baseEjection",
            );
        }
        self.count(
            "spec.upstream.outlierDetection.maxEjectedPercent",
            outlier.max_ejected_percent,
            0..=100,
        );

        if let Some(check) = &upstream.health_check {
            if let Err(message) = check_probe_path(&check.path) {
                self.err("spec.upstream.healthCheck.path", message);
            }
            self.duration("spec.upstream.healthCheck.interval", check.interval, 3600);
            self.duration("spec.upstream.healthCheck.timeout", check.timeout, 300);
            self.count(
                "spec.upstream.healthCheck.healthyThreshold",
                check.healthy_threshold,
                1..=100,
            );
            self.count(
                "spec.upstream.healthCheck.unhealthyThreshold",
                check.unhealthy_threshold,
                1..=100,
            );
        }

        if let HostHeader::Rewrite(host) = &upstream.host_header
            && (host.is_empty()
                || host.len() > MAX_TEXT_LEN
                || http::uri::Authority::try_from(host.as_str()).is_err()
                || host.contains('@'))
        {
            self.err(
                "spec.upstream.hostHeader.rewrite",
                format!("{host:?} is not a valid host[:port]"),
            );
        }

        let breaker = &upstream.circuit_breaker;
        self.count(
            "spec.upstream.circuitBreaker.maxConnections",
            breaker.max_connections,
            1..=1_000_000,
        );
        self.count(
            "spec.upstream.circuitBreaker.maxPending",
            breaker.max_pending,
            0..=1_000_000,
        );
        self.upstream_tls(api);
    }

    fn upstream_tls(&mut self, api: &ApiDefinition) {
        let upstream = &api.spec.upstream;
        let Some(tls) = &upstream.tls else {
            return;
        };
        if !upstream.endpoints.iter().any(|e| {
            e.url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        }) {
            self.err(
                "spec.upstream.tls",
                "applies to https:// endpoints, and the upstream has none",
            );
        }
        if let Some(ca) = &tls.ca
            && let Err(message) = check_ca_pem(ca)
        {
            self.err("spec.upstream.tls.ca", message);
        }
        if let Some(name) = &tls.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            self.err(
                "spec.upstream.tls.serverName",
                format!("{name:?} is not a valid DNS name or IP address"),
            );
        }
        if let Some(name) = &tls.client_certificate
            && let Err(message) = validate_name(name)
        {
            self.err("spec.upstream.tls.clientCertificate", message);
        }
    }

    fn operations(
        &mut self,
        api: &ApiDefinition,
        ctx: ValidationContext<'_>,
        attached: &Attachment<'_>,
    ) {
        let ops = &api.spec.operations;
        if ops.len() > MAX_OPERATIONS {
            self.err(
                "spec.operations",
                format!("more than {MAX_OPERATIONS} operations"),
            );
            return;
        }
        // Insert every template into a router exactly as the data plane will, so that a
        // definition that validates always builds.
        let mut router = matchit::Router::new();
        let mut by_template: HashMap<String, (usize, Vec<&str>)> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let field = format!("spec.operations[{i}]");
            if !METHODS.contains(&op.method.as_str()) {
                self.err(
                    format!("{field}.method"),
                    format!(
                        "unsupported method {:?}; use one of {}",
                        op.method,
                        METHODS.join(", ")
                    ),
                );
            }
            let path_ok = match check_template(&op.path) {
                Ok(()) => true,
                Err(message) => {
                    self.err(format!("{field}.path"), message);
                    false
                }
            };
            let routed = routed_template(&op.path, api.spec.case_insensitive);
            if path_ok {
                match by_template.get_mut(routed.as_ref()) {
                    Some((first, methods)) => {
                        if methods.contains(&op.method.as_str()) {
                            self.err(
                                field.clone(),
                                format!(
                                    "duplicate operation {} {}: already defined at spec.operations[{first}]",
                                    op.method, op.path
                                ),
                            );
                        } else {
                            methods.push(&op.method);
                        }
                    }
                    None => match router.insert(routed.as_ref(), i) {
                        Ok(()) => {
                            by_template.insert(routed.into_owned(), (i, vec![op.method.as_str()]));
                        }
                        Err(err) => self.err(
                            format!("{field}.path"),
                            format!("conflicts with another operation's path: {err}"),
                        ),
                    },
                }
            }
            let attached = Attachment {
                operation: Some((&op.method, &op.path)),
                ..*attached
            };
            self.policies(&format!("{field}.policies"), &op.policies, ctx, &attached);
        }
    }

    fn policies(
        &mut self,
        field: &str,
        policies: &[PolicyRef],
        ctx: ValidationContext<'_>,
        attached: &Attachment<'_>,
    ) {
        if policies.len() > MAX_POLICIES {
            self.err(field, format!("more than {MAX_POLICIES} policies"));
            return;
        }
        let mut seen = HashSet::new();
        for (i, policy) in policies.iter().enumerate() {
            let item = format!("{field}[{i}]");
            // once per phase: a rate limit before authentication and one after are two
            let phase = ctx.policies.map(|catalog| catalog.phase_name(policy));
            if !seen.insert((policy.name.as_str(), phase)) {
                self.err(
                    format!("{item}.name"),
                    format!("policy {:?} is listed twice", policy.name),
                );
                continue;
            }
            let Some(catalog) = ctx.policies.filter(|c| c.contains(&policy.name)) else {
                let message = match ctx.policies {
                    Some(catalog) => catalog.unknown(&policy.name),
                    None => format!(
                        "unknown policy {:?} (no policies are known to this validation)",
                        policy.name
                    ),
                };
                self.err(format!("{item}.name"), message);
                continue;
            };
            for error in catalog.check_params(policy, attached) {
                let path = if error.field.is_empty() {
                    format!("{item}.params")
                } else {
                    format!("{item}.params.{}", error.field)
                };
                self.err(path, error.message);
            }
        }
    }
}

/// Validates a certificate document: its identity, its groups, its PEM (the key must belong
/// to the certificate) and its server names. Returns every problem found.
pub fn validate_certificate(certificate: &CertificateDefinition) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.document(
        &certificate.api_version,
        (&certificate.kind, KIND_CERTIFICATE),
        &certificate.metadata,
        &certificate.spec.groups,
    );
    let spec = &certificate.spec;
    if spec.sni.len() > MAX_HOSTS {
        v.err("spec.sni", format!("more than {MAX_HOSTS} names"));
    }
    let mut seen = HashSet::new();
    for (i, name) in spec.sni.iter().enumerate() {
        let field = format!("spec.sni[{i}]");
        if name != "*"
            && let Err(message) = check_host(name)
        {
            v.err(field, message);
        } else if !seen.insert(name.as_str()) {
            v.err(field, format!("{name:?} is listed twice"));
        }
    }
    match certificate.parse_pem() {
        Ok(parsed) => {
            if spec.sni.is_empty() && parsed.dns_names.is_empty() {
                v.err(
                    "spec.sni",
                    "the certificate names no DNS host (subject alternative name): list the server names it is for",
                );
            }
        }
        Err(errors) => v.errors.extend(errors),
    }
    v.errors
}

/// Checks PEM text of CA certificates: at least one, each valid X.509.
fn check_ca_pem(pem: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if pem.len() > 1024 * 1024 {
        return Err("longer than 1 MiB".to_string());
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|err| format!("is not valid PEM: {}", super::messages::pem_error(&err)))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
    }
    for (i, der) in certs.iter().enumerate() {
        #[cfg(feature = "tls")]
        if let Err(err) = x509_parser::parse_x509_certificate(der.as_ref()) {
            return Err(format!(
                "certificate {} is not valid X.509: {}",
                i + 1,
                super::messages::x509_error(&err)
            ));
        }
        // without an X.509 parser, what the upstream client will do with it: a trust anchor
        #[cfg(not(feature = "tls"))]
        if rustls::RootCertStore::empty().add(der.clone()).is_err() {
            return Err(format!("certificate {} is not valid X.509", i + 1));
        }
    }
    Ok(())
}

/// Why a `;` is refused in a context or an operation path.
const PARAMETERS_IGNORED: &str = "must not contain ';': it starts path parameters, which routing ignores (as servlet containers do)";

/// An operation path as the data plane's operation router holds it: as written, or for a
/// case-insensitive API with its literal segments case-folded (parameters keep their
/// names).
pub(crate) fn routed_template(path: &str, case_insensitive: bool) -> std::borrow::Cow<'_, str> {
    if !case_insensitive {
        return std::borrow::Cow::Borrowed(path);
    }
    let folded: Vec<std::borrow::Cow<'_, str>> = path
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                std::borrow::Cow::Borrowed(segment)
            } else {
                crate::path::case_fold(segment)
            }
        })
        .collect();
    std::borrow::Cow::Owned(folded.join("/"))
}

/// `pchar` of RFC 3986 without `%`: percent-encoding is not allowed in contexts and
/// templates, so that one route has exactly one spelling.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || host.len() > 253 {
        return Err(format!("{host:?} is not a valid host name"));
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !ok {
            return Err(format!(
                "{host:?} is not a valid host name (letters, digits, '-' and '.', optionally starting with '*.'; no port)"
            ));
        }
    }
    Ok(())
}

/// A byte of an RFC 9110 token (header and cookie names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A health-check path: absolute, printable ASCII, no fragment, bounded.
fn check_probe_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".to_string());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("longer than {MAX_PATH_LEN} bytes"));
    }
    if path.contains('#') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces or '#'".to_string());
    }
    http::uri::PathAndQuery::try_from(path)
        .map(|_| ())
        .map_err(|e| format!("is not a valid path: {e}"))
}

fn check_endpoint_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|err| format!("{raw:?} is not a valid URL: {err}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("unsupported scheme {other:?}; use http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or a fragment".to_string());
    }
    let path = url.path();
    if path.len() > MAX_PATH_LEN {
        return Err(format!("the base path is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.contains("//") {
        return Err("the base path must not contain empty segments ('//')".to_string());
    }
    Ok(())
}

/// Checks an operation path template: `/`, or `/`-separated segments that are either
/// literal path characters or one `{name}` parameter.
fn check_template(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".to_string());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("longer than {MAX_PATH_LEN} bytes"));
    }
    if path == "/" {
        return Ok(());
    }
    let mut params = HashSet::new();
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("must not contain empty segments ('//') or end with '/'".to_string());
        }
        if segment == "." || segment == ".." {
            return Err("must not contain '.' or '..' segments".to_string());
        }
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if !is_param_name(name) {
                return Err(format!(
                    "parameter {segment:?} must be a name of letters, digits and '_'"
                ));
            }
            if !params.insert(name) {
                return Err(format!("parameter {{{name}}} is used twice"));
            }
        } else if segment.contains(';') {
            return Err(PARAMETERS_IGNORED.to_string());
        } else if let Some(bad) = segment.chars().find(|&c| !is_path_char(c)) {
            return Err(format!(
                "character {bad:?} is not allowed; a parameter takes a whole segment, like /items/{{id}}"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a path template parameter's name: a letter or `_`, then letters,
/// digits and `_`.
pub(crate) fn is_param_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates a consumer document: its identity, its gateway and ACL groups, and its
/// credentials (see [`ConsumerDefinition::from_value_validated`]).
pub(crate) fn validate_consumer(
    consumer: &super::ConsumerDefinition,
    allow_missing_keys: bool,
) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.document(
        &consumer.api_version,
        (&consumer.kind, super::KIND_CONSUMER),
        &consumer.metadata,
        &consumer.spec.groups,
    );
    v.errors.extend(super::consumer::check_spec(
        &consumer.spec,
        allow_missing_keys,
    ));
    v.errors
}
