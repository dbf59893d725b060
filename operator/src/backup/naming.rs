//! Backup file names: `<base>-<UTC time>.<dump|sql>[.zst|.gz]`, e.g.
//! `vidgen-20261122T020000Z.dump.zst`, and the manifest beside each: `<name>.manifest.json`.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::api::backup::{Compression, DumpFormat};

/// Suffix of the manifest written beside each good backup.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The file extension of a dump in `format` compressed with `compression`.
pub fn extension(format: DumpFormat, compression: Compression) -> String {
    let base = match format {
        DumpFormat::Custom => "dump",
        DumpFormat::Plain => "sql",
    };
    match compression {
        Compression::Zstd => format!("{base}.zst"),
        Compression::Gzip => format!("{base}.gz"),
        Compression::None => base.to_string(),
    }
}

/// The name of a backup of `base` started at `time`.
pub fn backup_name(
    base: &str,
    time: DateTime<Utc>,
    format: DumpFormat,
    compression: Compression,
) -> String {
    format!(
        "{base}-{}.{}",
        time.format(TIME_FORMAT),
        extension(format, compression)
    )
}

/// The manifest object name of backup `name`.
pub fn manifest_name(name: &str) -> String {
    format!("{name}{MANIFEST_SUFFIX}")
}

/// What a backup's name says: its base, start time, format and compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub base: String,
    pub time: DateTime<Utc>,
    pub format: DumpFormat,
    pub compression: Compression,
}

/// Parses a backup name; `None` for anything else (manifests, foreign files).
pub fn parse(name: &str) -> Option<Parsed> {
    let (stem, compression) = if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else {
        (name, Compression::None)
    };
    let (stem, format) = if let Some(s) = stem.strip_suffix(".dump") {
        (s, DumpFormat::Custom)
    } else if let Some(s) = stem.strip_suffix(".sql") {
        (s, DumpFormat::Plain)
    } else {
        return None;
    };
    let (base, time) = stem.rsplit_once('-')?;
    if base.is_empty() {
        return None;
    }
    let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()?
        .and_utc();
    Some(Parsed {
        base: base.to_string(),
        time,
        format,
        compression,
    })
}

/// A base name safe in object keys and file names: the database name with anything but
/// letters, digits, `_`, `-` and `.` turned into `_`.
pub fn sanitize_base(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "backup".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        for format in [DumpFormat::Custom, DumpFormat::Plain] {
            for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
                let name = backup_name("vid-gen", t, format, compression);
                let p = parse(&name).unwrap();
                assert_eq!(p.base, "vid-gen");
                assert_eq!(p.time, t);
                assert_eq!(p.format, format);
                assert_eq!(p.compression, compression);
            }
        }
        assert_eq!(
            backup_name("vidgen", t, DumpFormat::Custom, Compression::Zstd),
            "vidgen-20261122T020000Z.dump.zst"
        );
    }

    #[test]
    fn foreign_names() {
        for n in [
            "vidgen-20261122T020000Z.dump.zst.manifest.json",
            "notes.txt",
            "-20261122T020000Z.dump",
            "vidgen-2026.dump",
            "vidgen.sql.gz",
        ] {
            assert_eq!(parse(n), None, "{n}");
        }
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_base("my db/x"), "my_db_x");
        assert_eq!(sanitize_base(""), "backup");
    }
}
