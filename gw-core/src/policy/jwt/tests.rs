//! Tests of `jwt`: keys made here, tokens signed here, and a JWKS served on loopback.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::body;
use crate::policy::testing::{call, call_seen, store_with, text};
use crate::policy::{Consumer, PolicyRegistry};

/// A 2048-bit RSA key made for these tests only (openssl genrsa -traditional 2048).
const RSA_PRIVATE: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAsFjVO/pbAG7E6lFWd+2ihpL8CUZwRHdtFRBb9uOFoC+Y45ih\n\
5/IxW87WZ9MVGnH5N7+u0M/q0WidmZaycbIzYTAwb5mEyjks0TZfFEuid08Utz04\n\
6iV6Dy7KJQloCA6I2aG/OVUE0SipwGWIqYGJF/vONCqPsTMIiqkqaCa04Bh7TGVm\n\
EPZv9/OB6dEWjWpzxcsTGDHXE5OQ/++1WYSvXauL7WbprkT/5tlMGNGIif2HPB9g\n\
wRgv0nd4HYpIhEWwOpNPeqLXtQc1jTdwLIR2SEvE8a43Mg7NOp6ScEapBJhcG1lC\n\
opP361KKoH//RULCY8w7VtiypuVaRilaxh5yRwIDAQABAoIBAFY1j0TLfspm3Ggq\n\
jEmDyBTe7UyBfWfTNGX8QeEf2Fb3fdgh6WCxQ1T8+E74X5Q2jJ2m3Qji5AosiQMp\n\
KyIu+jQ0cTFVjRepPNIoMPIEia+m3ts3mEfLO3EJsDPL9eoeZONz0b5u5DR2Gwpd\n\
+KHZHBK3/FX/SpDXgID88yjIZ1s3fNKtDJtvzLiJPAFej7ebCL0d+/ViHydQv10o\n\
AA4qQU/NGbl7eGZ/7nZicXdeRVkCqR9gwevsxX0NEJRrkE2lB7Gg9Dva1TNlzbdY\n\
Al71OeKW6mKX4IIYoMK/1wxsCTBmqwvONAVJoY42aJ+KV9AM/TzOEE700bcpNMge\n\
RTH+mYUCgYEA20k8gIf/BTzJ/hlWRR4k5hj5cF5XhLYlftG7IKHWViRdrFuBNT4B\n\
i1EDE58SNBN2E7zC39u9+iFtJ23jmxdr7mUEY0Pe1sZ9UI3RRUYBAWeGBuPFLsBB\n\
82SpL+lnHB/5ksTxPabHxeLhrfH3BO0C0sO77Gkbw++/JvjtLhvBJCUCgYEAzd8y\n\
L+rq2MapIxPzNmpzlExC4wSHw8fwSPB7EgeHzp05hIG+P86dhfpUImI3wVyartZ6\n\
PMGlUvUwm6n/KkoP0kf5tx+SsMY+O45r1L+UXpUStshzpj80OD5Ak3Y9lp0lu4fE\n\
2WNbF7/12fIKyGz2YNOin5VeCIVCA/CpeflvWvsCgYA7U+YllCXAAgFYWPyJOK2c\n\
/1bFOxEMm8crN40cOAzoQ3CAiEU95We/jIx7i4b+ReGlV2WV8TrF6LNCfq2csUqH\n\
Nhdoz90DWLJgz+21g0oUWjDdvlQD4Qo20p4fk1NNPa1lMxldp7jW5hpO2G8Pixw/\n\
b6txO8LCUSPzZFevKN0pbQKBgHNgiCb0uENfKwFet+qiRD4zczT5oADoN9EY/VBA\n\
aiswUEDj2bS23e9tOOPAOdEjTgl4aC9Os5HHmkNTRY70zOMjtV6c0kBCCjSkf+hO\n\
qh9L2p4Xv0DHoUN4GAbMuH2FetUbpQXUOgQYb/eCP+rNrlLbqQNY2cdar4G3ybNz\n\
SKYrAoGAXcMAhqLXD8LNn+DyOclS5T5kH5S38tP00X5k6TEF2tHnHfEBL3Zobd1P\n\
vmddv6MOae+S+cDHw7osbQvzagmp63Wh6xe38+Q8Fwx4VI71Rd1qR6irybksbJsm\n\
Hh12PO3aQqmMiCpEfaQiBRky8s9G9l5Yvr5BetmoChJq3bWwv9U=\n\
-----END RSA PRIVATE KEY-----\n\
";

/// Its public key.
const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsFjVO/pbAG7E6lFWd+2i\n\
hpL8CUZwRHdtFRBb9uOFoC+Y45ih5/IxW87WZ9MVGnH5N7+u0M/q0WidmZaycbIz\n\
YTAwb5mEyjks0TZfFEuid08Utz046iV6Dy7KJQloCA6I2aG/OVUE0SipwGWIqYGJ\n\
F/vONCqPsTMIiqkqaCa04Bh7TGVmEPZv9/OB6dEWjWpzxcsTGDHXE5OQ/++1WYSv\n\
XauL7WbprkT/5tlMGNGIif2HPB9gwRgv0nd4HYpIhEWwOpNPeqLXtQc1jTdwLIR2\n\
SEvE8a43Mg7NOp6ScEapBJhcG1lCopP361KKoH//RULCY8w7VtiypuVaRilaxh5y\n\
RwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

/// A signing key and what a policy needs to verify it.
struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    /// The public key as a JWK (without `kid` or `alg`).
    jwk: serde_json::Value,
    /// The public key as PEM (none for HS256).
    pem: Option<String>,
}

fn pem_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

fn rsa() -> Signer {
    let der = pem_der(RSA_PUBLIC);
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).unwrap();
    let Ok(x509_parser::public_key::PublicKey::RSA(key)) = spki.parsed() else {
        panic!("not RSA");
    };
    let b64 = |bytes: &[u8]| {
        let start = bytes.iter().position(|&b| b != 0).unwrap();
        URL_SAFE_NO_PAD.encode(&bytes[start..])
    };
    Signer {
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(&pem_der(RSA_PRIVATE)),
        jwk: json!({"kty": "RSA", "n": b64(key.modulus), "e": b64(key.exponent)}),
        pem: Some(RSA_PUBLIC.to_string()),
    }
}

fn ec() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    Signer {
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }),
        pem: Some(pair.public_key_pem()),
    }
}

fn ed() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Signer {
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
        pem: Some(pair.public_key_pem()),
    }
}

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";

fn hs() -> Signer {
    Signer {
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(SECRET),
        jwk: json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET)}),
        pem: None,
    }
}

impl Signer {
    /// The public JWK with `kid`.
    fn jwk(&self, kid: &str) -> serde_json::Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk
    }

    fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(ToString::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Claims that pass the default checks of [`params`].
fn claims() -> serde_json::Value {
    json!({
        "iss": "https://idp.example", "aud": ["orders", "other"], "sub": "alice@idp",
        "exp": now() + 600, "nbf": now() - 10, "scope": "orders:read orders:write",
        "email": "alice@example.com", "tenant": 7, "roles": ["a", "b"], "admin": true
    })
}

/// Params with the keys of `extra` merged in.
fn params(extra: &serde_json::Value) -> JwtConfig {
    let mut value = json!({
        "algorithms": ["RS256", "ES256", "EdDSA", "HS256"],
        "issuer": ["https://idp.example"],
        "audience": ["orders"],
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    let registry = PolicyRegistry::builtin();
    let errors = registry.validate_params("jwt", &value, &crate::policy::testing::ctx());
    assert!(errors.is_empty(), "{errors:?}");
    serde_json::from_value(value).unwrap()
}

fn layer_in(params: JwtConfig, store: &ConsumerStore) -> RouteLayer {
    let ctx = PolicyContext {
        consumers: store,
        ..crate::policy::testing::ctx()
    };
    JwtPolicy.layer(params, &ctx).unwrap()
}

fn layer(extra: &serde_json::Value) -> RouteLayer {
    layer_in(params(extra), ConsumerStore::empty())
}

fn bearer(token: &str) -> Request<Body> {
    Request::builder()
        .uri("/orders/1")
        .header("authorization", format!("Bearer {token}"))
        .body(body::empty())
        .unwrap()
}

/// The status, the challenge and the body of a refusal of `token`.
async fn refusal(layer: &RouteLayer, token: &str) -> (StatusCode, String, String) {
    let (seen, response) = call_seen(layer, bearer(token)).await;
    assert!(seen.is_none(), "the upstream was called");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status(), challenge, text(response).await)
}

async fn assert_invalid(layer: &RouteLayer, token: &str, description: &str) {
    let (status, challenge, body) = refusal(layer, token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"gw\", error=\"invalid_token\", error_description=\"{description}\""
        )
    );
    assert!(body.contains("\"invalid_token\""), "{body}");
    assert!(body.contains(description), "{body}");
}

fn all_keys_layer(signers: &[(&str, &Signer)]) -> RouteLayer {
    let jwks: Vec<serde_json::Value> = signers.iter().map(|(kid, s)| s.jwk(kid)).collect();
    layer(&json!({"jwks": {"keys": jwks}}))
}

#[tokio::test]
async fn tokens_of_each_algorithm_pass_and_do_not_reach_the_upstream() {
    let (rsa, ec, ed, hs) = (rsa(), ec(), ed(), hs());
    // from an inline JWKS, by kid
    let layer = all_keys_layer(&[("r", &rsa), ("e", &ec), ("d", &ed), ("h", &hs)]);
    for (kid, signer) in [("r", &rsa), ("e", &ec), ("d", &ed), ("h", &hs)] {
        let (seen, response) = call(&layer, bearer(&signer.sign(Some(kid), &claims()))).await;
        assert_eq!(response.status(), 200, "{:?}", signer.alg);
        assert!(
            seen.headers().get("authorization").is_none(),
            "the token went upstream"
        );
        // and without a kid, by the header's algorithm
        call(&layer, bearer(&signer.sign(None, &claims()))).await;
    }
    // from PEM keys and the secret
    let public_keys: Vec<serde_json::Value> = [(&rsa, "RS256"), (&ec, "ES256"), (&ed, "EdDSA")]
        .into_iter()
        .map(|(s, alg)| json!({"pem": s.pem.clone().unwrap(), "algorithm": alg}))
        .collect();
    let layer =
        super::tests::layer(&json!({"publicKeys": public_keys, "secret": STANDARD.encode(SECRET)}));
    for signer in [&rsa, &ec, &ed, &hs] {
        let (_, response) = call(&layer, bearer(&signer.sign(None, &claims()))).await;
        assert_eq!(response.status(), 200, "{:?}", signer.alg);
    }
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let (rsa, ec, hs) = (rsa(), ec(), hs());
    let layer = all_keys_layer(&[("r", &rsa), ("e", &ec)]);
    let with = |change: serde_json::Value| {
        let mut c = claims();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let sign = |c: serde_json::Value| ec.sign(Some("e"), &c);

    // time: beyond the 30 s leeway
    assert_invalid(
        &layer,
        &sign(with(json!({"exp": now() - 31}))),
        "the token has expired",
    )
    .await;
    call(&layer, bearer(&sign(with(json!({"exp": now() - 5}))))).await;
    assert_invalid(
        &layer,
        &sign(with(json!({"nbf": now() + 120}))),
        "the token is not valid yet",
    )
    .await;
    assert_invalid(
        &layer,
        &sign(with(json!({"exp": null}))),
        "the token has no expiry",
    )
    .await;
    // issuer and audience
    for iss in [json!("https://evil.example"), json!(null), json!(7)] {
        assert_invalid(
            &layer,
            &sign(with(json!({"iss": iss}))),
            "the token's issuer is not accepted",
        )
        .await;
    }
    for aud in [
        json!("other"),
        json!(["x", "y"]),
        json!(null),
        json!({"a": "orders"}),
    ] {
        assert_invalid(
            &layer,
            &sign(with(json!({"aud": aud}))),
            "the token's audience is not accepted",
        )
        .await;
    }
    call(&layer, bearer(&sign(with(json!({"aud": "orders"}))))).await;

    // an ES256 token naming the RSA key: the algorithm is not the key's
    assert_invalid(
        &layer,
        &ec.sign(Some("r"), &claims()),
        "the token's algorithm is not its key's",
    )
    .await;
    // alg: none, hand-crafted, with and without a signature
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "kid": "e"}),
        json!({"alg": "None"}),
    ] {
        for signature in ["", "AAAA"] {
            let token = format!("{}.{}.{signature}", part(header.clone()), part(claims()));
            assert_invalid(&layer, &token, "the token's algorithm is not accepted").await;
        }
    }
    // the tampered payload: a signature made for another payload
    let good = sign(claims());
    let other = sign(with(json!({"sub": "mallory"})));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_invalid(&layer, &forged, "the token's signature is not valid").await;
    // an unknown kid, with no JWKS URL to look again
    assert_invalid(
        &layer,
        &ec.sign(Some("nope"), &claims()),
        "the token's key is unknown",
    )
    .await;
    // HS256 is not accepted by this policy's keys: no key verifies it
    assert_invalid(
        &layer,
        &hs.sign(None, &claims()),
        "no key verifies the token's algorithm",
    )
    .await;
    // malformed
    for token in [
        "abc",
        "a.b",
        "a.b.c.d",
        &format!("!!.{}.{}", parts[1], parts[2]),
        &format!("e30.{}.{}", parts[1], parts[2]),
    ] {
        assert_invalid(&layer, token, "the token is malformed").await;
    }
    // a header with an extension marked critical
    let crit = format!(
        "{}.{}.{}",
        part(json!({"alg": "ES256", "kid": "e", "crit": ["b64"], "b64": false})),
        parts[1],
        parts[2]
    );
    assert_invalid(&layer, &crit, "the token is malformed").await;
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_rsa_public_key_is_refused() {
    let rsa = rsa();
    // HS256 is accepted, with its own secret, next to the RSA key
    let layer = layer(&json!({
        "publicKeys": [{"pem": RSA_PUBLIC, "algorithm": "RS256", "kid": "r"}],
        "secret": STANDARD.encode(SECRET),
    }));
    call(&layer, bearer(&rsa.sign(Some("r"), &claims()))).await;
    let confused = Signer {
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        jwk: json!({}),
        pem: None,
    };
    assert_invalid(
        &layer,
        &confused.sign(Some("r"), &claims()),
        "the token's algorithm is not its key's",
    )
    .await;
    assert_invalid(
        &layer,
        &confused.sign(None, &claims()),
        "the token's signature is not valid",
    )
    .await;
    // also with the DER bytes and the JWK's modulus
    for secret in [
        pem_der(RSA_PUBLIC),
        URL_SAFE_NO_PAD
            .decode(rsa.jwk["n"].as_str().unwrap())
            .unwrap(),
    ] {
        let confused = Signer {
            key: EncodingKey::from_secret(&secret),
            ..hs()
        };
        assert_invalid(
            &layer,
            &confused.sign(None, &claims()),
            "the token's signature is not valid",
        )
        .await;
    }
}

#[tokio::test]
async fn scopes_and_required_claims() {
    let ec = ec();
    let layer = all_keys_layer_with(
        &ec,
        &json!({"scopes": ["orders:read"], "requiredClaims": ["email"]}),
    );
    call(&layer, bearer(&ec.sign(None, &claims()))).await;
    let mut c = claims();
    c["scope"] = json!("orders:write");
    let (status, challenge, body) = refusal(&layer, &ec.sign(None, &c)).await;
    assert_eq!(status, 403);
    assert_eq!(
        challenge,
        "Bearer realm=\"gw\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"orders:read\""
    );
    assert!(body.contains("insufficient_scope"), "{body}");
    // scp, as a list
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["orders:read"]);
    call(&layer, bearer(&ec.sign(None, &c))).await;
    // a required claim missing, or null
    for email in [None, Some(json!(null))] {
        let mut c = claims();
        match email {
            None => c.as_object_mut().unwrap().remove("email"),
            Some(v) => c.as_object_mut().unwrap().insert("email".into(), v),
        };
        assert_invalid(
            &layer,
            &ec.sign(None, &c),
            "the token lacks a required claim",
        )
        .await;
    }
}

fn all_keys_layer_with(signer: &Signer, extra: &serde_json::Value) -> RouteLayer {
    let mut extra = extra.clone();
    extra["jwks"] = json!({"keys": [signer.jwk("k")]});
    layer(&extra)
}

#[tokio::test]
async fn missing_tokens_and_where_tokens_are_found() {
    let ec = ec();
    let token = ec.sign(None, &claims());
    let layer = all_keys_layer_with(&ec, &json!({"cookie": "session"}));
    let (seen, response) = call_seen(
        &layer,
        Request::builder().uri("/o").body(body::empty()).unwrap(),
    )
    .await;
    assert!(seen.is_none());
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"gw\""
    );
    assert!(text(response).await.contains("missing_credentials"));
    // another scheme is no bearer token
    let (seen, _) = call_seen(
        &layer,
        Request::builder()
            .uri("/o")
            .header("authorization", format!("Basic {token}"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert!(seen.is_none());
    // two tokens
    let two = Request::builder()
        .uri("/o")
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .body(body::empty())
        .unwrap();
    let (seen, response) = call_seen(&layer, two).await;
    assert!(seen.is_none());
    assert_eq!(response.status(), 401);
    // the scheme in any case
    call(
        &layer,
        Request::builder()
            .uri("/o")
            .header("authorization", format!("bEaReR  {token}"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    // from the cookie, which is removed, the other cookies kept
    let request = Request::builder()
        .uri("/o")
        .header("cookie", format!("a=1; session={token}; b=2"))
        .header("cookie", "c=3")
        .body(body::empty())
        .unwrap();
    let (seen, _) = call(&layer, request).await;
    let cookies: Vec<&str> = seen
        .headers()
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; b=2", "c=3"]);

    // a custom header carries the bare token
    let layer = all_keys_layer_with(&ec, &json!({"header": "X-Token"}));
    let request = Request::builder()
        .uri("/o")
        .header("x-token", &token)
        .body(body::empty())
        .unwrap();
    let (seen, _) = call(&layer, request).await;
    assert!(seen.headers().get("x-token").is_none());
    let (seen, _) = call_seen(&layer, bearer(&token)).await;
    assert!(seen.is_none(), "Authorization is not looked at");
}

#[tokio::test]
async fn claims_are_forwarded_as_headers() {
    let ec = ec();
    let layer = all_keys_layer_with(
        &ec,
        &json!({"forwardClaims": {
            "sub": "X-User", "tenant": "X-Tenant", "admin": "X-Admin", "roles": "X-Roles",
            "absent": "X-Absent", "bad": "X-Bad"
        }}),
    );
    let mut c = claims();
    c["bad"] = json!("line\nbreak");
    let request = Request::builder()
        .uri("/o")
        .header("authorization", format!("Bearer {}", ec.sign(None, &c)))
        .header("x-absent", "forged by the client")
        .header("x-user", "forged")
        .body(body::empty())
        .unwrap();
    let (seen, _) = call(&layer, request).await;
    let header = |name: &str| {
        seen.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("x-user").as_deref(), Some("alice@idp"));
    assert_eq!(header("x-tenant").as_deref(), Some("7"));
    assert_eq!(header("x-admin").as_deref(), Some("true"));
    assert_eq!(header("x-roles").as_deref(), Some("[\"a\",\"b\"]"));
    assert_eq!(header("x-absent"), None, "a client's copy is removed");
    assert_eq!(header("x-bad"), None, "not a valid header value: skipped");
    assert_eq!(seen.headers().get_all("x-user").iter().count(), 1);
}

#[tokio::test]
async fn tokens_name_consumers() {
    let ec = ec();
    let store = store_with(json!([
        {"type": "jwt", "id": "j1", "subject": "alice@idp", "issuer": "https://idp.example"},
        {"type": "jwt", "id": "j2", "subject": "alice@example.com", "claim": "email"}
    ]));
    let mut p = params(&json!({"jwks": {"keys": [ec.jwk("k")]}, "consumerRequired": true}));
    let layer = layer_in(p, &store);
    let (seen, _) = call(&layer, bearer(&ec.sign(None, &claims()))).await;
    let consumer = seen.extensions().get::<Consumer>().unwrap();
    assert_eq!(
        (&*consumer.name, consumer.credential.as_deref()),
        ("alice", Some("j1"))
    );
    // by another claim
    let mut c = claims();
    c["sub"] = json!("someone else");
    let (seen, _) = call(&layer, bearer(&ec.sign(None, &c))).await;
    let consumer = seen.extensions().get::<Consumer>().unwrap();
    assert_eq!(consumer.credential.as_deref(), Some("j2"));
    // none: refused when a consumer is required
    c["email"] = json!("nobody@example.com");
    let (status, challenge, body) = refusal(&layer, &ec.sign(None, &c)).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(body.contains("unknown_consumer"), "{body}");
    // and admitted without one otherwise
    p = params(&json!({"jwks": {"keys": [ec.jwk("k")]}}));
    let layer = layer_in(p, &store);
    let (seen, _) = call(&layer, bearer(&ec.sign(None, &c))).await;
    assert!(seen.extensions().get::<Consumer>().is_none());
    // a binding to an issuer needs the policy to list that issuer: the same token on a
    // policy that accepts any issuer names no consumer through it (but through j2's email)
    let layer = layer_in(
        params(&json!({"jwks": {"keys": [ec.jwk("k")]}, "issuer": []})),
        &store,
    );
    let (seen, _) = call(&layer, bearer(&ec.sign(None, &claims()))).await;
    let consumer = seen.extensions().get::<Consumer>().unwrap();
    assert_eq!(consumer.credential.as_deref(), Some("j2"));
    let mut only_sub = claims();
    only_sub.as_object_mut().unwrap().remove("email");
    let (seen, _) = call(&layer, bearer(&ec.sign(None, &only_sub))).await;
    assert!(seen.extensions().get::<Consumer>().is_none());
}

#[test]
fn claims_keep_only_what_is_read() {
    let payload = br#"{"exp": 1, "big": {"deep": [1, 2, 3]}, "sub": "a\u0062", "email": "e"}"#;
    let wanted = |name: &str| name == "sub";
    let claims = Claims::parse(payload, &wanted).unwrap();
    let names: Vec<&str> = claims.kept.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["exp", "sub"]);
    assert_eq!(claims.get("sub"), Some(&json!("ab")));
    assert!(Claims::parse(br#"{"exp": 1, "exp": 2}"#, &wanted).is_err());
    assert!(
        Claims::parse(br#"{"a": 1, "a": 2}"#, &wanted).is_ok(),
        "ignored claims are not read"
    );
    assert!(Claims::parse(br"[1]", &wanted).is_err());
    assert!(Claims::parse(br#"{"exp": 1} x"#, &wanted).is_err());
}

#[test]
fn params_are_checked() {
    let registry = PolicyRegistry::builtin();
    let ctx = crate::policy::testing::ctx();
    let fields = |value: serde_json::Value| -> Vec<String> {
        registry
            .validate_params("jwt", &value, &ctx)
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(
        fields(json!({"algorithms": ["none"], "secret": STANDARD.encode(SECRET)})),
        ["algorithms[0]"]
    );
    assert_eq!(fields(json!({"algorithms": []})), ["algorithms", "jwks"]);
    assert_eq!(
        fields(json!({"algorithms": ["RS256"], "secret": STANDARD.encode(b"short")})),
        ["secret", "secret"]
    );
    assert_eq!(
        fields(json!({
            "algorithms": ["ES256"],
            "jwks": {"keys": [rsa().jwk("r"), {"kty": "oct", "k": "AAAA"}, ec().jwk("e"), {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]},
            "publicKeys": [{"pem": RSA_PUBLIC, "algorithm": "ES256"}, {"pem": RSA_PRIVATE, "algorithm": "ES256"}],
        })),
        [
            "jwks.keys[0]",
            "jwks.keys[1]",
            "jwks.keys[3]",
            "publicKeys[0].pem",
            "publicKeys[1].pem"
        ]
    );
    assert_eq!(
        fields(json!({
            "algorithms": ["RS256"], "jwksUrl": "ftp://idp/jwks", "refreshInterval": "10s",
            "minRefreshInterval": "0s", "leeway": "6m", "scopes": ["a b"], "header": "",
            "forwardClaims": {"sub": "Authorization", "x": "Content-Length"}, "cookie": "a;b"
        })),
        [
            "jwksUrl",
            "refreshInterval",
            "minRefreshInterval",
            "leeway",
            "scopes[0]",
            "forwardClaims.sub",
            "forwardClaims.x",
            "cookie"
        ]
    );
    assert_eq!(
        fields(json!({"algorithms": ["RS256"], "jwksUrl": "https://user:pw@idp/jwks"})),
        ["jwksUrl"]
    );
    assert_eq!(
        fields(json!({"algorithms": ["RS256"], "jwksUrl": "https://idp.example/jwks", "extra": 1})),
        ["extra"]
    );
    assert!(
        fields(
            json!({"algorithms": ["RS256"], "jwksUrl": "https://idp.example/.well-known/jwks.json"})
        )
        .is_empty()
    );
    assert_eq!(
        fields(json!({"algorithms": ["RS256"], "header": "", "jwksUrl": "https://idp/jwks"})),
        ["header"]
    );
    // plain HTTP only on loopback: anyone on the path could serve their own keys
    assert_eq!(
        fields(json!({"algorithms": ["RS256"], "jwksUrl": "http://idp.example/jwks"})),
        ["jwksUrl"]
    );
    assert!(
        fields(json!({"algorithms": ["RS256"], "jwksUrl": "http://127.0.0.1:9/jwks"})).is_empty()
    );
}

/// A JWKS server on loopback: what it answers, and how many requests it had.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<(u16, String)>>,
}

impl JwksServer {
    async fn start(jwks: &serde_json::Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new((200, jwks.to_string())));
        let (h, a) = (Arc::clone(&hits), Arc::clone(&answer));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, a) = (Arc::clone(&h), Arc::clone(&a));
                tokio::spawn(async move {
                    let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = a.lock().unwrap().clone();
                        async move {
                            let mut response = http::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            hits,
            answer,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn answer(&self, status: u16, body: &serde_json::Value) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    /// Waits until the server has had `n` requests and the remote has settled.
    async fn wait_for(&self, n: usize, remote: &Remote) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.hits() < n || !remote.idle() {
            assert!(Instant::now() < deadline, "the JWKS was not fetched");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn remote_of(url: &str) -> Arc<Remote> {
    Remote::shared(
        &url::Url::parse(url).unwrap(),
        default_refresh().as_duration(),
        default_min_refresh().as_duration(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_refetched_for_new_keys_at_most_once_per_interval() {
    let (k1, k2) = (ec(), ed());
    let server = JwksServer::start(&json!({"keys": [k1.jwk("k1")]})).await;
    let layer = layer(&json!({"jwksUrl": server.url}));
    let remote = remote_of(&server.url);
    server.wait_for(1, &remote).await;
    call(&layer, bearer(&k1.sign(Some("k1"), &claims()))).await;
    assert_eq!(server.hits(), 1);

    // the provider rotates: a token with the new kid makes the gateway look again
    server.answer(200, &json!({"keys": [k1.jwk("k1"), k2.jwk("k2")]}));
    call(&layer, bearer(&k2.sign(Some("k2"), &claims()))).await;
    assert_eq!(server.hits(), 2);
    assert_eq!(remote.fetches(), 2);

    // another unknown kid within minRefreshInterval: no fetch
    assert_invalid(
        &layer,
        &k2.sign(Some("k3"), &claims()),
        "the token's key is unknown",
    )
    .await;
    assert_invalid(
        &layer,
        &k2.sign(Some("k4"), &claims()),
        "the token's key is unknown",
    )
    .await;
    assert_eq!(server.hits(), 2);
    // known keys still pass
    call(&layer, bearer(&k1.sign(Some("k1"), &claims()))).await;
    call(&layer, bearer(&k2.sign(None, &claims()))).await;

    // a second policy with the same URL shares the keys and the fetches
    let again = all_keys_free_layer(&server.url);
    call(&again, bearer(&k2.sign(Some("k2"), &claims()))).await;
    assert_eq!(server.hits(), 2);
}

fn all_keys_free_layer(url: &str) -> RouteLayer {
    layer(&json!({"jwksUrl": url}))
}

#[tokio::test]
async fn a_failing_jwks_url_keeps_the_last_good_keys() {
    let (k1, k2) = (rsa(), ec());
    let server = JwksServer::start(&json!({"keys": [k1.jwk("k1")]})).await;
    let layer = layer(&json!({"jwksUrl": server.url, "minRefreshInterval": "1s"}));
    let remote = Remote::shared(
        &url::Url::parse(&server.url).unwrap(),
        default_refresh().as_duration(),
        Duration::from_secs(1),
    )
    .unwrap();
    server.wait_for(1, &remote).await;
    call(&layer, bearer(&k1.sign(Some("k1"), &claims()))).await;

    for (status, body) in [
        (500, json!({"keys": [k2.jwk("k2")]})),
        (200, json!("not a JWKS")),
        (302, json!({})),
        // a JWKS with no usable key (empty, or encryption keys only) is a failed fetch too
        (200, json!({"keys": []})),
    ] {
        server.answer(status, &body);
        let before = server.hits();
        // wait out minRefreshInterval, polling, so that the unknown kid fetches again
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.hits() == before {
            assert!(Instant::now() < deadline, "no refetch");
            assert_invalid(
                &layer,
                &k2.sign(Some("k2"), &claims()),
                "the token's key is unknown",
            )
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.wait_for(before + 1, &remote).await;
        // the old key still verifies
        call(&layer, bearer(&k1.sign(Some("k1"), &claims()))).await;
    }
}

#[tokio::test]
async fn a_request_before_the_first_fetch_waits_for_it() {
    let k1 = ec();
    let server = JwksServer::start(&json!({"keys": [k1.jwk("k1")]})).await;
    // the first request comes before the first fetch has ended, and waits for it
    let layer = layer(&json!({"jwksUrl": server.url}));
    call(&layer, bearer(&k1.sign(None, &claims()))).await;
    assert_eq!(server.hits(), 1);
}

/// The verifier is the policy's checks without a request: a token the policy admits gives
/// its claims, one it refuses gives the same reason.
#[tokio::test]
async fn the_verifier_answers_what_the_policy_decides() {
    let (key, impostor) = (ec(), ec());
    let config = || params(&json!({"jwks": {"keys": [key.jwk("k1")]}}));
    let verifier = JwtVerifier::new(config()).unwrap();
    let layer = layer_in(config(), ConsumerStore::empty());

    let verified = verifier
        .verify(&key.sign(Some("k1"), &claims()))
        .await
        .unwrap();
    assert_eq!(verified["email"], "alice@example.com");
    assert_eq!(verified["roles"], json!(["a", "b"]));
    assert_eq!(verified["sub"], "alice@idp");
    assert!(verifier.has_keys());

    let with = |name: &str, value: serde_json::Value| {
        let mut claims = claims();
        claims[name] = value;
        claims
    };
    for (token, reject) in [
        (
            key.sign(Some("k1"), &with("exp", json!(now() - 60))),
            Reject::Expired,
        ),
        (
            key.sign(Some("k1"), &with("nbf", json!(now() + 600))),
            Reject::NotYetValid,
        ),
        (
            key.sign(Some("k1"), &with("iss", json!("https://other.example"))),
            Reject::Issuer,
        ),
        (
            key.sign(Some("k1"), &with("aud", json!("other"))),
            Reject::Audience,
        ),
        (impostor.sign(Some("k1"), &claims()), Reject::Signature),
        (hs().sign(None, &claims()), Reject::NoKey),
        ("x".repeat(17 * 1024), Reject::Malformed),
        ("a.b".to_string(), Reject::Malformed),
    ] {
        assert_eq!(
            verifier.verify(&token).await,
            Err(VerifyError::Rejected(reject)),
            "{reject:?}"
        );
        if token.len() < 1024 {
            assert_invalid(&layer, &token, &reject.to_string()).await;
        }
    }

    // what only a request can use is refused
    let mut forwarding = config();
    forwarding
        .forward_claims
        .insert("email".into(), "x-email".into());
    forwarding.consumer_required = true;
    let err = JwtVerifier::new(forwarding).unwrap_err().to_string();
    assert!(
        err.contains("forwardClaims") && err.contains("consumerRequired"),
        "{err}"
    );
    // and the params are checked as the policy's are
    let err = JwtVerifier::new(JwtConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("give at least one algorithm"), "{err}");
}

/// A verifier whose JWKS URL never answered says so, rather than calling every token
/// invalid; a key rotation at the provider is picked up as by the policy.
#[tokio::test]
async fn the_verifier_waits_for_keys_and_says_when_there_are_none() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let key = ec();
    let down =
        JwtVerifier::new(params(&json!({"jwksUrl": format!("http://{addr}/jwks")}))).unwrap();
    for kid in [Some("k1"), None] {
        assert_eq!(
            down.verify(&key.sign(kid, &claims())).await,
            Err(VerifyError::KeysUnavailable)
        );
    }
    assert!(!down.has_keys());

    let rotated = ed();
    let server = JwksServer::start(&json!({"keys": [key.jwk("k1")]})).await;
    let verifier = JwtVerifier::new(params(&json!({"jwksUrl": server.url}))).unwrap();
    // the first token waits for the first fetch
    assert!(
        verifier
            .verify(&key.sign(Some("k1"), &claims()))
            .await
            .is_ok()
    );
    server.answer(200, &json!({"keys": [key.jwk("k1"), rotated.jwk("k2")]}));
    assert!(
        verifier
            .verify(&rotated.sign(Some("k2"), &claims()))
            .await
            .is_ok()
    );
    assert_eq!(server.hits(), 2);
}
