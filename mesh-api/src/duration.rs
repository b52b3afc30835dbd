//! Istio-style duration strings (`"5s"`, `"100ms"`, `"1m30s"`, `"1.5s"`), as the
//! mesh resources write timeouts and intervals.
//!
//! The grammar is Go's `time.ParseDuration` without a sign, which is what Istio
//! accepts in its CRDs: one or more `<decimal number><unit>` with units `h`,
//! `m`, `s`, `ms`, `us` (or `µs`) and `ns`.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Empty string.
    #[error("empty duration (write e.g. \"5s\" or \"100ms\")")]
    Empty,
    /// A number is missing or malformed where one was expected.
    #[error("invalid duration {0:?}: expected a number followed by a unit (h, m, s, ms, us, ns), e.g. \"5s\" or \"100ms\"")]
    Syntax(String),
    /// The number has no unit, or an unknown one.
    #[error(
        "invalid duration {input:?}: unknown or missing unit {unit:?} (use h, m, s, ms, us or ns)"
    )]
    Unit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// The duration does not fit in 64-bit nanoseconds.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses an Istio duration string such as `"5s"`, `"100ms"` or `"1h2m3.5s"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax(input.to_string());
    let overflow = || DurationError::Overflow(input.to_string());
    let mut total_ns: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(syntax());
        }
        let unit_ns: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => {
                return Err(DurationError::Unit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut ns = int.checked_mul(unit_ns).ok_or_else(overflow)?;
        // Fractions finer than a nanosecond are dropped, as Go does.
        let mut scale = unit_ns;
        for digit in frac_part.bytes() {
            scale /= 10;
            ns += u128::from(digit - b'0') * scale;
        }
        total_ns = total_ns.checked_add(ns).ok_or_else(overflow)?;
        rest = next;
    }
    let total_ns = u64::try_from(total_ns).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(total_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        let cases = [
            ("5s", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            (".5s", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "-5s",
            "5sec",
            "1.2.3s",
            "5d",
            "99999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
