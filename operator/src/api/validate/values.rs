//! Value rules: DNS names, image references, quantities, route paths.

use crate::api::units::parse_quantity;

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` characters.
pub fn dns_label(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label: at most {max} lowercase letters, digits or '-', starting and ending with a letter or digit (got {s:?})"
        ))
    }
}

/// A DNS-1123 subdomain, the rule for most Kubernetes object names.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase DNS name of letters, digits, '-' and '.' (got {s:?})"
        ))
    }
}

/// A fully qualified host name such as `vidgen.example.com` (optionally `*.example.com`).
pub fn dns_name(s: &str, allow_wildcard: bool) -> Result<(), String> {
    let body = match s.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => s,
    };
    let labels_ok = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!(
            "must be a lowercase DNS name like app.example.com (got {s:?})"
        ))
    }
}

/// A container image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, with Docker's
/// rule that the first component is a registry only when it has a `.` or `:` or is `localhost`.
pub fn image_ref(s: &str) -> Result<(), String> {
    static RES: std::sync::OnceLock<Option<(regex::Regex, regex::Regex)>> =
        std::sync::OnceLock::new();
    let bad = || {
        Err(format!(
            "must be an image reference like ghcr.io/acme/api:1.4.2 (lowercase repository, optional tag or @sha256 digest; got {s:?})"
        ))
    };
    let Some((registry_re, rest_re)) = RES.get_or_init(|| {
        let registry = regex::Regex::new(
            r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$",
        );
        let rest = regex::Regex::new(concat!(
            r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
            r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
        ));
        registry.ok().zip(rest.ok())
    }) else {
        return Ok(());
    };
    if s.is_empty() || s.len() > 512 {
        return bad();
    }
    let rest = match s.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            if !registry_re.is_match(first) {
                return bad();
            }
            rest
        }
        _ => s,
    };
    if rest_re.is_match(rest) {
        Ok(())
    } else {
        bad()
    }
}

pub(super) fn quantity(s: &str) -> Result<(), String> {
    parse_quantity(s).map(drop)
}

pub(super) fn positive_quantity(s: &str) -> Result<(), String> {
    let q = parse_quantity(s)?;
    if q.milli() == 0 {
        return Err(format!("must be greater than zero (got {s:?})"));
    }
    Ok(())
}

pub(super) fn route_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("must start with / (got {p:?})"));
    }
    if p.contains('*') {
        let prefix = p.trim_end_matches('*').trim_end_matches('/');
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        return Err(format!(
            "is a prefix, not a glob: write {prefix:?} instead of {p:?}"
        ));
    }
    if p.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '{' | '}' | ';' | '"' | '\'' | '\\' | '$' | '#' | '?')
    }) {
        return Err(format!(
            "must be a plain URL path: no spaces, quotes, braces, ';', '$', '#', '?' or '\\' (got {p:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "postgres:16",
            "ghcr.io/acme/vidgen-api:1.4.2",
            "localhost:5000/team/app:latest",
            "qdrant/qdrant:v1.12.0",
            "berth-demo/api:latest",
            "ollama/ollama@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "UPPER/case:tag",
            "image with space",
            "",
            "app:",
            ":tag",
            "a//b",
        ] {
            assert!(image_ref(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn dns_names() {
        assert!(dns_name("vidgen.example.com", false).is_ok());
        assert!(dns_name("Not_A_Domain", false).is_err());
        assert!(dns_name("*.example.com", false).is_err());
        assert!(dns_name("*.example.com", true).is_ok());
        assert!(dns_name("a b.com", false).is_err());
        assert!(dns_label("vidgen", 63).is_ok());
        assert!(dns_label("Vidgen_Prod", 63).is_err());
    }

    #[test]
    fn route_paths() {
        assert!(route_path("/api/generate").is_ok());
        assert!(route_path("api").is_err());
        assert!(route_path("/a b").is_err());
        assert!(route_path("/x;return 200").is_err());
    }
}
