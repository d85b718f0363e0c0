//! The texts of parse errors in gw's own words.
//!
//! The libraries that read documents (serde-saphyr for YAML, serde's derived deserializers,
//! the PEM and X.509 parsers) write their errors for the developers who call them: they name
//! their own functions and options (`use from_str_multiple`, `set DuplicateKeyPolicy in
//! Options`), Rust types (`expected struct ApiDefinition`, `expected u32`) or print their
//! structures with `Debug` (`Der(UnexpectedTag { expected: Some(Tag(16)), .. })`). This
//! module turns them into sentences an operator can act on; everything a user sees of a
//! parse error goes through it.

use std::borrow::Cow;

#[cfg(feature = "yaml")]
use serde_saphyr::budget::BudgetBreach;
#[cfg(feature = "yaml")]
use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

/// serde-saphyr's user-facing messages, with the few that still speak to a developer
/// rewritten.
#[cfg(feature = "yaml")]
struct YamlMessages;

#[cfg(feature = "yaml")]
impl MessageFormatter for YamlMessages {
    fn format_message<'a>(&self, err: &'a YamlError) -> Cow<'a, str> {
        match err {
            YamlError::MultipleDocuments { .. } => Cow::Borrowed(
                "the text holds several YAML documents (separated by `---`) where one is \
                 expected; send one document per request",
            ),
            YamlError::Budget { breach, .. } => Cow::Owned(format!(
                "the document is too large or too complex: {}",
                breach_text(breach)
            )),
            YamlError::AliasReplayCounterOverflow { .. }
            | YamlError::AliasReplayLimitExceeded { .. }
            | YamlError::AliasExpansionLimitExceeded { .. }
            | YamlError::AliasReplayStackDepthExceeded { .. } => Cow::Borrowed(
                "the document is too large or too complex: its aliases (`*name`) expand to \
                 too much",
            ),
            _ => UserMessageFormatter.format_message(err),
        }
    }
}

#[cfg(feature = "yaml")]
fn breach_text(breach: &BudgetBreach) -> &'static str {
    match breach {
        BudgetBreach::Events { .. } | BudgetBreach::Nodes { .. } => "too many values",
        BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } => {
            "too many aliases (`*name`)"
        }
        BudgetBreach::Anchors { .. } => "too many anchors (`&name`)",
        BudgetBreach::Depth { .. } => "nested too deeply",
        BudgetBreach::Documents { .. } => "too many documents",
        BudgetBreach::ScalarBytes { .. } | BudgetBreach::InputBytes { .. } => "too much text",
        BudgetBreach::MergeKeys { .. } => "too many merge keys (`<<`)",
        _ => "a size limit was reached",
    }
}

/// The text of a YAML parse error: what is wrong, where (line and column), and an excerpt
/// of the text around it.
#[cfg(feature = "yaml")]
pub(crate) fn yaml_error(err: &YamlError) -> String {
    err.render_with_formatter(&YamlMessages)
}

/// A serde error message with the Rust types it names put in a document's words:
/// `expected struct ApiDefinition` becomes `expected a mapping`, `expected u32` becomes
/// `expected a whole number from 0 to 4294967295`.
pub(crate) fn type_error_text(message: &str) -> String {
    const PREFIX: &str = "data did not match any variant of untagged enum ";
    if message.starts_with(PREFIX) {
        return "the value matches none of the forms this field takes".to_string();
    }
    let Some((head, expected)) = message.split_once(", expected ") else {
        return message.to_string();
    };
    format!("{head}, expected {}", expected_text(expected))
}

fn expected_text(expected: &str) -> Cow<'_, str> {
    let named = |prefix: &str| {
        expected
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(is_path_char))
    };
    if named("struct variant ")
        || named("struct ")
        || named("internally tagged enum ")
        || named("adjacently tagged enum ")
    {
        return Cow::Borrowed("a mapping");
    }
    if named("tuple struct ") || named("tuple variant ") {
        return Cow::Borrowed("a sequence");
    }
    if named("enum ") {
        return Cow::Borrowed("one of the values this field takes");
    }
    let whole = |max: u64| Cow::Owned(format!("a whole number from 0 to {max}"));
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => whole(u64::MAX),
        "i8" | "i16" | "i32" | "i64" | "isize" => Cow::Borrowed("a whole number"),
        "f32" | "f64" => Cow::Borrowed("a number"),
        "char" => Cow::Borrowed("a single character"),
        other => Cow::Borrowed(other),
    }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Why PEM text does not parse, without quoting it (it may be a private key).
pub(crate) fn pem_error(err: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no `-----END {}-----` line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { .. } => "a `-----BEGIN` line is malformed".to_string(),
        Error::Base64Decode(_) => "the base64 text of a section is invalid".to_string(),
        Error::NoItemsFound => "it holds no PEM section".to_string(),
        Error::SectionTooLarge => "a section is larger than 10 MB".to_string(),
        _ => "it is not valid PEM".to_string(),
    }
}

/// Why a DER certificate is not valid X.509.
#[cfg(feature = "tls")]
pub(crate) fn x509_error(err: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    use x509_parser::error::X509Error;
    use x509_parser::nom::Err;
    match err {
        Err::Incomplete(_) => "it is truncated".to_string(),
        Err::Error(inner) | Err::Failure(inner) => match inner {
            X509Error::Der(_) | X509Error::NomError(_) | X509Error::Generic => {
                "its DER encoding is malformed".to_string()
            }
            // the others name the part that is wrong ("invalid X.509 name", ...)
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_errors_read_as_gw_s_words() {
        let several = serde_saphyr::from_str::<serde_json::Value>("a: 1\n---\nb: 2\n").unwrap_err();
        let text = yaml_error(&several);
        assert!(text.contains("several YAML documents"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(!text.contains("from_str"), "{text}");
        let duplicate = serde_saphyr::from_str::<serde_json::Value>("a: 1\na: 2\n").unwrap_err();
        let text = yaml_error(&duplicate);
        assert!(text.contains("duplicate"), "{text}");
        assert!(!text.contains("Options"), "{text}");
        assert!(!text.contains("DuplicateKeyPolicy"), "{text}");
    }

    #[test]
    fn type_errors_name_no_rust_type() {
        assert_eq!(
            type_error_text("invalid type: integer `42`, expected struct ApiDefinition"),
            "invalid type: integer `42`, expected a mapping"
        );
        assert_eq!(
            type_error_text("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            type_error_text("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number"
        );
        assert_eq!(
            type_error_text("invalid type: integer `5`, expected a string"),
            "invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            type_error_text("unknown variant `nope`, expected one of `a`, `b`"),
            "unknown variant `nope`, expected one of `a`, `b`"
        );
        assert_eq!(
            type_error_text("data did not match any variant of untagged enum Limit"),
            "the value matches none of the forms this field takes"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn pem_and_x509_errors_print_no_structure() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let err = CertificateDer::pem_slice_iter(unterminated.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        let text = pem_error(&err);
        assert!(text.contains("-----END CERTIFICATE-----"), "{text}");
        assert!(!text.contains('['), "{text}");
        let err = x509_parser::parse_x509_certificate(&[0, 0, 0]).unwrap_err();
        let text = x509_error(&err);
        assert_eq!(text, "its DER encoding is malformed");
    }
}
