//! Scalar notations of `hm.toml` that are more than TOML types: sizes, durations, retry
//! classes, and opaque tables handed on as JSON.

use std::time::Duration;

use toml_edit::{Item, Value};

use super::model::RetryClass;

/// Parses a size in bytes.
///
/// A number, optionally with a fraction, then an optional unit (spaces allowed between them,
/// unit case ignored):
/// - no unit or `B`: bytes (no fraction);
/// - `K`, `M`, `G`, `T` (also `KB`, `MB`, `GB`, `TB`): decimal, powers of 1000, as on disk
///   labels and in Kubernetes (`1G` = 1,000,000,000);
/// - `KiB`, `MiB`, `GiB`, `TiB` (also `Ki`, `Mi`, `Gi`, `Ti`): binary, powers of 1024.
///
/// Fractions are rounded to the nearest byte (`1.5KiB` = 1536). TOML integers are accepted by
/// the pipeline parser directly and never reach this function.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the size is empty".to_owned());
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || number.ends_with('.') {
        return Err(format!("`{number}` is not a number"));
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` (units: B, K, M, G, T, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    if multiplier == 1 && !fraction.is_empty() {
        return Err("a number of bytes cannot have a fraction".to_owned());
    }
    // Integer arithmetic so that `0.1GB` is exactly 100,000,000; u128 and a cap on the digits
    // keep every step below overflow for any input.
    let too_large = || format!("`{text}` is too large");
    if whole.len() > 20 || fraction.len() > 12 {
        return Err(too_large());
    }
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = whole * multiplier + (fraction_value * multiplier + scale / 2) / scale;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a duration with humantime (`90s`, `5m`, `1h30m`, `2h 15min`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    let text = text.trim();
    // humantime's own messages give byte offsets and list every unit; these name the problem.
    humantime::parse_duration(text).map_err(|err| match err {
        DurationError::Empty => "the duration is empty".to_owned(),
        DurationError::InvalidCharacter(at) => {
            match text.get(at..).and_then(|s| s.chars().next()) {
                Some(c) => format!("unexpected `{c}`"),
                None => "unexpected character".to_owned(),
            }
        }
        DurationError::NumberExpected(_) => "expected a number followed by a unit".to_owned(),
        DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("`{value}` needs a unit")
        }
        DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit `{unit}` (units: ms, s, m, h, d, w and their long forms)")
        }
        DurationError::NumberOverflow => "the duration is too large or too precise".to_owned(),
    })
}

/// The retry class names, for messages and suggestions; `exit:N` stands for the
/// family.
pub(crate) const RETRY_CLASS_NAMES: &[&str] = &[
    "failed",
    "exit:N",
    "signal",
    "oom",
    "pids",
    "timeout",
    "crash",
    "image",
    "service",
    "node_lost",
];

/// Parses one retry class: `failed`, `exit:N` (N in 1..=255), `signal`, `oom`, `pids`,
/// `timeout`, `crash`, `image`, `service`, `node_lost`.
pub fn parse_retry_class(text: &str) -> Result<RetryClass, String> {
    Ok(match text {
        "failed" => RetryClass::Failed,
        "signal" => RetryClass::Signal,
        "oom" => RetryClass::Oom,
        "pids" => RetryClass::Pids,
        "timeout" => RetryClass::Timeout,
        "crash" => RetryClass::Crash,
        "image" => RetryClass::Image,
        "service" => RetryClass::Service,
        "node_lost" => RetryClass::NodeLost,
        _ => {
            let Some(code) = text.strip_prefix("exit:") else {
                return Err(format!("unknown retry class `{text}`"));
            };
            // Exit statuses are 0..=255 on Unix and 0 is success, so nothing else can match.
            match code.trim().parse::<i32>() {
                Ok(code @ 1..=255) => RetryClass::Exit(code),
                _ => return Err(format!("`{text}` needs an exit code from 1 to 255")),
            }
        }
    })
}

/// An opaque table (`with`, `config`) converted to JSON, or the places where it cannot be.
///
/// Datetimes become their TOML text. Only non-finite floats fail: JSON has no `nan` or `inf`.
pub(crate) fn item_to_json(item: &Item, bad: &mut Vec<BadJson>) -> serde_json::Value {
    match item {
        Item::None => serde_json::Value::Null,
        Item::Value(value) => value_to_json(value, bad),
        Item::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(key, item)| (key.to_owned(), item_to_json(item, bad)))
                .collect(),
        ),
        Item::ArrayOfTables(tables) => serde_json::Value::Array(
            tables
                .iter()
                .map(|table| {
                    serde_json::Value::Object(
                        table
                            .iter()
                            .map(|(key, item)| (key.to_owned(), item_to_json(item, bad)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

/// A value that JSON cannot represent, with its position.
pub(crate) struct BadJson {
    pub(crate) span: Option<std::ops::Range<usize>>,
    pub(crate) value: String,
}

fn value_to_json(value: &Value, bad: &mut Vec<BadJson>) -> serde_json::Value {
    match value {
        Value::String(s) => serde_json::Value::String(s.value().clone()),
        Value::Integer(i) => serde_json::Value::from(*i.value()),
        Value::Float(f) => match serde_json::Number::from_f64(*f.value()) {
            Some(number) => serde_json::Value::Number(number),
            None => {
                bad.push(BadJson {
                    span: value.span(),
                    value: f.value().to_string(),
                });
                serde_json::Value::Null
            }
        },
        Value::Boolean(b) => serde_json::Value::Bool(*b.value()),
        Value::Datetime(d) => serde_json::Value::String(d.value().to_string()),
        Value::Array(array) => {
            serde_json::Value::Array(array.iter().map(|v| value_to_json(v, bad)).collect())
        }
        Value::InlineTable(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(key, v)| (key.to_owned(), value_to_json(v, bad)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let check = |text: &str, expected: Result<u64, &str>| {
            assert_eq!(
                parse_size(text),
                expected.map_err(str::to_owned),
                "size {text:?}"
            );
        };
        check("0", Ok(0));
        check("100000000", Ok(100_000_000));
        check("512B", Ok(512));
        check("1K", Ok(1_000));
        check("1kb", Ok(1_000));
        check("1G", Ok(1_000_000_000));
        check("2T", Ok(2_000_000_000_000));
        check("1KiB", Ok(1024));
        check("512MiB", Ok(512 * 1024 * 1024));
        check("1GiB", Ok(1 << 30));
        check("1 GiB", Ok(1 << 30));
        check(" 4Gi ", Ok(4 << 30));
        check("1TiB", Ok(1 << 40));
        check("1.5KiB", Ok(1536));
        check("0.1GB", Ok(100_000_000));
        check("1.0000001K", Ok(1000));
        check("18446744073709551615", Ok(u64::MAX));
        check(
            "18446744073709551616",
            Err("`18446744073709551616` is too large"),
        );
        check("20000000TiB", Err("`20000000TiB` is too large"));
        check("", Err("the size is empty"));
        check("GiB", Err("`GiB` does not start with a number"));
        check("-1G", Err("`-1G` does not start with a number"));
        check("1.5", Err("a number of bytes cannot have a fraction"));
        check("1.G", Err("`1.` is not a number"));
        check(".5G", Err("`.5` is not a number"));
        check("1.2.3G", Err("`1.2.3` is not a number"));
        check(
            "12XB",
            Err("unknown unit `XB` (units: B, K, M, G, T, KiB, MiB, GiB, TiB)"),
        );
        check(
            "1 G B",
            Err("unknown unit `G B` (units: B, K, M, G, T, KiB, MiB, GiB, TiB)"),
        );
    }

    #[test]
    fn durations() {
        let check = |text: &str, expected: Option<u64>| {
            assert_eq!(
                parse_duration(text).ok(),
                expected.map(Duration::from_secs),
                "{text:?}"
            );
        };
        check("90s", Some(90));
        check("5m", Some(300));
        check("1h30m", Some(5400));
        check("2h 15min", Some(8100));
        check(" 10s ", Some(10));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let fails = |text: &str, reason: &str| {
            assert_eq!(parse_duration(text), Err(reason.to_owned()), "{text:?}");
        };
        fails("10", "`10` needs a unit");
        fails("", "the duration is empty");
        fails("soon", "expected a number followed by a unit");
        fails(
            "5 parsecs",
            "unknown unit `parsecs` (units: ms, s, m, h, d, w and their long forms)",
        );
        fails("5m-3s", "unexpected `-`");
        fails(
            "99999999999999999999h",
            "the duration is too large or too precise",
        );
    }

    #[test]
    fn retry_classes() {
        let check = |text: &str, expected: Result<RetryClass, &str>| {
            assert_eq!(
                parse_retry_class(text),
                expected.map_err(str::to_owned),
                "{text:?}"
            );
        };
        check("failed", Ok(RetryClass::Failed));
        check("signal", Ok(RetryClass::Signal));
        check("oom", Ok(RetryClass::Oom));
        check("pids", Ok(RetryClass::Pids));
        check("timeout", Ok(RetryClass::Timeout));
        check("crash", Ok(RetryClass::Crash));
        check("image", Ok(RetryClass::Image));
        check("service", Ok(RetryClass::Service));
        check("node_lost", Ok(RetryClass::NodeLost));
        check("exit:101", Ok(RetryClass::Exit(101)));
        check("exit:1", Ok(RetryClass::Exit(1)));
        check("exit:255", Ok(RetryClass::Exit(255)));
        check("exit:0", Err("`exit:0` needs an exit code from 1 to 255"));
        check(
            "exit:256",
            Err("`exit:256` needs an exit code from 1 to 255"),
        );
        check("exit:", Err("`exit:` needs an exit code from 1 to 255"));
        check("exit:x", Err("`exit:x` needs an exit code from 1 to 255"));
        check("OOM", Err("unknown retry class `OOM`"));
        check("exit", Err("unknown retry class `exit`"));
    }

    #[test]
    fn opaque_tables_become_json() {
        let check = |toml: &str, expected: &str| {
            let doc = toml_edit::Document::parse(toml).expect("test input is valid TOML");
            let mut bad = Vec::new();
            let json = item_to_json(doc.as_item(), &mut bad);
            assert!(bad.is_empty(), "{toml:?} has values JSON cannot hold");
            // Compared as values, not text: key order depends on serde_json's features.
            let expected: serde_json::Value =
                serde_json::from_str(expected).expect("test expectation is valid JSON");
            assert_eq!(json, expected, "{toml:?}");
        };
        check("", "{}");
        check(
            "pull = \"missing\"\nn = 3\nf = 1.5\nb = true\nlist = [1, \"two\"]\nt = { a = { b = 1 } }",
            r#"{"b":true,"f":1.5,"list":[1,"two"],"n":3,"pull":"missing","t":{"a":{"b":1}}}"#,
        );
        check(
            "when = 1979-05-27T07:32:00Z",
            r#"{"when":"1979-05-27T07:32:00Z"}"#,
        );
        check(
            "[a]\nx = 1\n[[a.list]]\ny = 2\n[[a.list]]\ny = 3",
            r#"{"a":{"list":[{"y":2},{"y":3}],"x":1}}"#,
        );

        let doc = toml_edit::Document::parse("a = nan\nb = [inf]").expect("valid TOML");
        let mut bad = Vec::new();
        item_to_json(doc.as_item(), &mut bad);
        let bad: Vec<(String, Option<std::ops::Range<usize>>)> =
            bad.into_iter().map(|b| (b.value, b.span)).collect();
        assert_eq!(
            bad,
            vec![
                ("NaN".to_owned(), Some(4..7)),
                ("inf".to_owned(), Some(13..16))
            ]
        );
    }
}
