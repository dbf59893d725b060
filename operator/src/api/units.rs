//! Durations (`90s`, `15m`, `12h`, `30d`, `1h30m`) and Kubernetes resource quantities
//! (`500m`, `512Mi`, `10Gi`, `1.5`), parsed the same way by validation and by every backend.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
/// `0` alone is accepted as zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("must be a duration like 90s, 15m, 12h or 30d (got an empty string)".into());
    }
    let bad = || format!("must be a duration like 90s, 15m, 12h or 30d (got {s:?})");
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let millis_per_unit: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(number.checked_mul(millis_per_unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    let millis = u64::try_from(total).map_err(|_| bad())?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration the way manifests write it (largest exact unit).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A parsed quantity: the value in thousandths of the base unit (milli-units), so `500m` CPU is
/// 500 and `1Gi` is 1073741824000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    milli: u128,
}

impl Quantity {
    /// The value rounded up to whole base units (bytes for memory and storage).
    pub fn whole_units(self) -> u128 {
        self.milli.div_ceil(1000)
    }
    /// The value in thousandths (millicores for CPU).
    pub fn milli(self) -> u128 {
        self.milli
    }
}

/// Parses a non-negative Kubernetes quantity: a decimal number with an optional suffix
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`).
pub fn parse_quantity(s: &str) -> Result<Quantity, String> {
    let bad = || {
        format!(
            "must be a quantity like 500m, 512Mi, 10Gi or 2 (got {s:?}; note: 10GB is not a Kubernetes quantity, use 10G or 10Gi)"
        )
    };
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || frac_part.len() > 9 {
        return Err(bad());
    }
    let multiplier_milli: u128 = match suffix {
        "m" => 1,
        "" => 1_000,
        "k" => 1_000_000,
        "M" => 1_000_000_000,
        "G" => 1_000_000_000_000,
        "T" => 1_000_000_000_000_000,
        "P" => 1_000_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000_000,
        "Ki" => 1_024_000,
        "Mi" => 1_024 * 1_024_000,
        "Gi" => 1_024 * 1_024 * 1_024_000,
        "Ti" => 1_024 * 1_024 * 1_024 * 1_024_000,
        "Pi" => 1_024 * 1_024 * 1_024 * 1_024 * 1_024_000,
        "Ei" => 1_024 * 1_024 * 1_024 * 1_024 * 1_024 * 1_024_000,
        _ => return Err(bad()),
    };
    let int: u128 = int_part.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(frac_part.len() as u32);
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| bad())?
    };
    let milli = int
        .checked_mul(multiplier_milli)
        .and_then(|v| v.checked_add(frac.checked_mul(multiplier_milli)? / scale))
        .ok_or_else(bad)?;
    Ok(Quantity { milli })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("90s", 90_000),
            ("15m", 900_000),
            ("12h", 43_200_000),
            ("30d", 2_592_000_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("0s", 0),
            ("0", 0),
            ("2160h", 7_776_000_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "5", "5 minutes", "10x", "m5", "1.5h", "-5s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn duration_round_trip() {
        for text in ["90s", "15m", "12h", "30d", "250ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").unwrap().milli(), 500);
        assert_eq!(parse_quantity("2").unwrap().milli(), 2000);
        assert_eq!(parse_quantity("1.5").unwrap().milli(), 1500);
        assert_eq!(
            parse_quantity("512Mi").unwrap().whole_units(),
            512 * 1024 * 1024
        );
        assert_eq!(
            parse_quantity("10Gi").unwrap().whole_units(),
            10 * 1024 * 1024 * 1024
        );
        assert_eq!(parse_quantity("1G").unwrap().whole_units(), 1_000_000_000);
        assert_eq!(
            parse_quantity("1.5Gi").unwrap().whole_units(),
            1536 * 1024 * 1024
        );
        for bad in [
            "10GB", "lots", "fast", "", "-1Gi", "1..5", ".5", "5.", "1 Gi",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
