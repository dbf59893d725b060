//! Regular expressions the CRD schemas carry, so the API server itself refuses what it can
//! (`berth validate` applies the same patterns offline through api/schema_check.rs, and the
//! semantic rules in api/validate.rs say the rest in plain words).

/// A duration: `0`, or `<integer><unit>` parts with units ms, s, m, h, d (`90s`, `1h30m`).
pub const DURATION: &str = r"^(0|([0-9]+(ms|s|m|h|d))+)$";
/// A lowercase DNS name (`app.example.com`), also an object name (DNS-1123 subdomain).
pub const DNS_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS name that may start with `*.`.
pub const DNS_NAME_OR_WILDCARD: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Kubernetes resource quantity (`500m`, `512Mi`, `1.5`, `1e3`), as apimachinery writes it.
pub const QUANTITY: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
/// An image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, lowercase path.
/// The first component is a registry only when it has a `.` or a port or is `localhost`
/// (Docker's rule), so `UPPER/case` is a (bad) repository path, not a registry.
pub const IMAGE: &str = r"^((localhost(:[0-9]+)?|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+(:[0-9]+)?|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?:[0-9]+)/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// A cron schedule with 5 fields, or one of the `@daily` style macros.
pub const CRON: &str = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|\S+(\s+\S+){4})$";
/// An S3 bucket name.
pub const S3_BUCKET: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// An http(s) URL, or empty.
pub const URL_OR_EMPTY: &str = r"^(https?://.+)?$";
/// Empty, or not starting with `/`.
pub const NO_LEADING_SLASH: &str = r"^([^/].*)?$";
/// Something other than blanks.
pub const NOT_BLANK: &str = r"\S";

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn matches(p: &str, s: &str) -> bool {
        Regex::new(p).unwrap().is_match(s)
    }

    #[test]
    fn patterns_agree_with_the_semantic_rules() {
        for (s, ok) in [
            ("90s", true),
            ("1h30m", true),
            ("0", true),
            ("100ms", true),
            ("30 days", false),
            ("10x", false),
            ("5", false),
        ] {
            assert_eq!(matches(DURATION, s), ok, "{s}");
            assert_eq!(crate::api::units::parse_duration(s).is_ok(), ok, "{s}");
        }
        for (s, ok) in [
            ("500m", true),
            ("512Mi", true),
            ("1.5", true),
            ("10Gi", true),
            ("10gb", false),
            ("lots", false),
            ("500MB", false),
        ] {
            assert_eq!(matches(QUANTITY, s), ok, "{s}");
        }
        for (s, ok) in [
            ("ghcr.io/acme/api:1.4.2", true),
            ("redis:7", true),
            ("localhost:5000/x/y@sha256:".to_string().leak(), false),
            ("berth-demo/api:latest", true),
            ("registry.invalid/e2e/api:1", true),
            ("ghcr.io/Acme/api:1", false),
            ("acme/api 1", false),
            ("UPPER/case:tag", false),
            ("localhost/app:1", true),
            ("registry:5000/app", true),
        ] {
            assert_eq!(matches(IMAGE, s), ok, "{s}");
            assert_eq!(crate::api::validate::image_ref(s).is_ok(), ok, "{s}");
        }
        for (s, ok) in [
            ("app.example.com", true),
            ("demo.localhost", true),
            ("App.example.com", false),
            ("https://a.b", false),
            ("a.b:80", false),
            ("a b", false),
        ] {
            assert_eq!(matches(DNS_NAME, s), ok, "{s}");
            assert_eq!(crate::api::validate::dns_name(s, false).is_ok(), ok, "{s}");
        }
        assert!(matches(DNS_NAME_OR_WILDCARD, "*.example.com"));
        assert!(!matches(DNS_NAME, "*.example.com"));
        for (s, ok) in [
            ("0 2 * * *", true),
            ("@daily", true),
            ("0 2 * *", false),
            ("0 0 2 * * *", false),
        ] {
            assert_eq!(matches(CRON, s), ok, "{s}");
            assert_eq!(crate::api::schedule::parse_cron(s).is_ok(), ok, "{s}");
        }
    }
}
