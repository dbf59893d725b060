//! Cron schedules (5 fields, as Kubernetes CronJobs take them) in an IANA time zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

const MACROS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// Checks that `expr` has the 5 cron fields Kubernetes accepts (or one of the `@daily` style
/// macros) and parses it.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let text = expr.trim();
    let is_macro = MACROS.contains(&text);
    if !is_macro {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "must be a cron schedule with 5 fields (minute hour day-of-month month day-of-week), got {fields} in {expr:?}"
            ));
        }
    }
    if !is_macro {
        check_field_ranges(text, expr)?;
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    parser
        .parse(text)
        .map_err(|e| format!("is not a valid cron schedule ({expr:?}): {e}"))
}

/// Names each out-of-range number with its field and the allowed range, which the parser's
/// own error does not.
fn check_field_ranges(text: &str, expr: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day-of-month", 1, 31),
        ("month", 1, 12),
        ("day-of-week", 0, 7),
    ];
    for (field, (name, lo, hi)) in text.split_whitespace().zip(FIELDS) {
        for part in field.split(',') {
            // The step after `/` is a count, not a value of the field.
            let values = part.split('/').next().unwrap_or("");
            for number in values
                .split('-')
                .filter(|n| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
            {
                let n: u32 = number.parse().unwrap_or(u32::MAX);
                if n < lo || n > hi {
                    return Err(format!(
                        "has {name} {number} in {expr:?}: the {name} field takes {lo}-{hi}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parses an IANA time zone name such as `UTC` or `Europe/Berlin`.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as UTC or Europe/Berlin")
    })
}

impl Schedule {
    /// Parses a schedule and its time zone.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self, String> {
        Ok(Schedule {
            cron: parse_cron(expr)?,
            tz: parse_time_zone(time_zone)?,
        })
    }

    /// The first time strictly after `after` at which the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether a run is due at `now`, given when it last ran (or, for a schedule that never
    /// ran, when it was created): true when a firing time lies in `(last, now]`.
    pub fn is_due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.next_after(last).is_some_and(|next| next <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_fields_only() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("*/15 * * * 1-5").is_ok());
        assert!(parse_cron("0 2 * *").is_err());
        assert!(parse_cron("0 0 2 * * *").is_err());
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("0 25 * * *").is_err());
    }

    #[test]
    fn next_in_time_zone() {
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(after),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap())
        );
        assert!(s.is_due(after, Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0).unwrap()));
        assert!(!s.is_due(
            after,
            Utc.with_ymd_and_hms(2026, 11, 23, 0, 59, 59).unwrap()
        ));
    }

    #[test]
    fn unknown_zone() {
        assert!(parse_time_zone("Mars/Olympus").is_err());
        assert!(parse_time_zone("UTC").is_ok());
    }
}
