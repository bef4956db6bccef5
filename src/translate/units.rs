//! Units shared by the `serve` flags and the annotations: durations (`300s`, `5m`, `never`)
//! and byte sizes (`64Ki`, `1Mi`). Pure parsing, no I/O.

use std::time::Duration;

/// Longest duration accepted anywhere (ten years): keeps `Instant + d` far from overflow.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 86400.0;

/// `300s`, `5m`, `1h`, `250ms`, or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{value}` is not a duration (e.g. 300s, 5m, 1h, 250ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "`{value}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(format!("`{value}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Like [`parse_duration`], plus `never`/`off`/`none` (and `0`) for none.
pub fn parse_optional_duration(value: &str) -> Result<Option<Duration>, String> {
    match value.trim() {
        "never" | "off" | "none" => Ok(None),
        v => parse_duration(v).map(|d| if d.is_zero() { None } else { Some(d) }),
    }
}

/// A strictly positive duration (a zero connect or pong timeout would fail every attempt).
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err(format!("`{value}` must be greater than zero"));
    }
    Ok(d)
}

/// A byte count: plain bytes, binary suffixes `Ki`/`Mi`/`Gi` or decimal `k`/`M`/`G`
/// (Kubernetes quantity style). `0` and `unlimited` mean no limit (`None`).
pub fn parse_bytes(value: &str) -> Result<Option<u64>, String> {
    let v = value.trim();
    if v == "unlimited" {
        return Ok(None);
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{value}` is not a byte size (e.g. 1048576, 64Ki, 1Mi)"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{value}`: unknown unit `{unit}` (use Ki, Mi, Gi, k, M or G)"
            ));
        }
    };
    let bytes = n
        .checked_mul(factor)
        .ok_or_else(|| format!("`{value}` is out of range"))?;
    Ok((bytes > 0).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("300s", Some(Duration::from_secs(300))),
            ("300", Some(Duration::from_secs(300))),
            ("5m", Some(Duration::from_secs(300))),
            ("250ms", Some(Duration::from_millis(250))),
            ("1.5h", Some(Duration::from_secs(5400))),
            (" 10s ", Some(Duration::from_secs(10))),
            ("5 minutes", None),
            ("-1s", None),
            ("", None),
            ("s", None),
            ("1d", None),
            ("100000000h", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), *want, "{input:?}");
        }
        assert_eq!(parse_optional_duration("never"), Ok(None));
        assert_eq!(parse_optional_duration("off"), Ok(None));
        assert_eq!(parse_optional_duration("0"), Ok(None));
        assert_eq!(
            parse_optional_duration("30s"),
            Ok(Some(Duration::from_secs(30)))
        );
        assert!(parse_optional_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Result<Option<u64>, ()>)] = &[
            ("1048576", Ok(Some(1_048_576))),
            ("64Ki", Ok(Some(65_536))),
            ("1Mi", Ok(Some(1_048_576))),
            ("2Gi", Ok(Some(2 << 30))),
            ("10k", Ok(Some(10_000))),
            ("3M", Ok(Some(3_000_000))),
            ("1G", Ok(Some(1_000_000_000))),
            ("0", Ok(None)),
            ("unlimited", Ok(None)),
            ("1MB", Err(())),
            ("1.5Mi", Err(())),
            ("-1", Err(())),
            ("", Err(())),
            ("99999999999999999999", Err(())),
            ("18446744073709551615Gi", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input).map_err(|_| ()), *want, "{input:?}");
        }
    }
}
