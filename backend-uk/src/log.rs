//! A `tracing` subscriber that prints events as console lines (`LEVEL target: message k=v`).

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use runtime_abi::tracing::field::{Field, Visit};
use runtime_abi::tracing::span::{Attributes, Id, Record};
use runtime_abi::tracing::{Event, Level, Metadata, Subscriber};

/// Prints enabled events to the console.
#[derive(Debug)]
pub struct ConsoleSubscriber {
    max: Level,
    next_id: AtomicU64,
}

impl ConsoleSubscriber {
    /// A subscriber for events at `max` and more severe.
    pub fn new(max: Level) -> Self {
        Self {
            max,
            next_id: AtomicU64::new(1),
        }
    }
}

/// Parses a level name (`error`..`trace`).
pub fn parse_level(name: &str) -> Level {
    match name {
        "error" => Level::ERROR,
        "warn" => Level::WARN,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        _ => Level::INFO,
    }
}

struct LineVisitor(String);

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn core::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let _ = write!(self.0, " {}=", field.name());
        write_f64(&mut self.0, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let _ = write!(self.0, " {}=", field.name());
        write_u128(&mut self.0, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let _ = write!(self.0, " {}=", field.name());
        if value < 0 {
            self.0.push('-');
        }
        write_u128(&mut self.0, value.unsigned_abs());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}=", field.name());
            write_quoted(&mut self.0, value);
        }
    }
}

/// Writes `value` quoted, as `{:?}` does for the ASCII a log field holds (`"`, `\` and control
/// characters escaped); other characters are written as they are. `{:?}` on a `str` would link
/// core's Unicode printability tables for log fields only.
fn write_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a float as a decimal rounded to 6 places (`NaN`, `inf`, and `>=1e19` beyond what a
/// `u64` holds): `{:?}` on an `f64` would link the float formatting machinery, about 10 KB of the
/// image, for log fields only.
fn write_f64(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_sign_negative() && value != 0.0 {
        out.push('-');
    }
    let abs = if value < 0.0 { -value } else { value };
    if abs.is_infinite() {
        out.push_str("inf");
    } else if abs < 1e12 {
        // A truncating cast after + 0.5 rounds half up without `f64::round` (std only).
        runtime_abi::node::write_decimal(out, (abs * 1e6 + 0.5) as u64, 6);
    } else if abs < 1e19 {
        let _ = write!(out, "{}", abs as u64);
    } else {
        out.push_str(">=1e19");
    }
}

/// Writes a `u128` in decimal through `u64` pieces: the default (`Debug`) would link core's
/// 128-bit formatter for log fields only.
fn write_u128(out: &mut String, value: u128) {
    const E19: u128 = 10_000_000_000_000_000_000;
    let (high, low) = (value / E19, (value % E19) as u64);
    if high == 0 {
        let _ = write!(out, "{low}");
    } else if high < E19 {
        let _ = write!(out, "{}{low:019}", high as u64);
    } else {
        let _ = write!(
            out,
            "{}{:019}{low:019}",
            (high / E19) as u64,
            (high % E19) as u64
        );
    }
}

/// Formats an event as one console line.
pub fn format_event(event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut visitor = LineVisitor(alloc::format!("{} {}:", meta.level(), meta.target()));
    event.record(&mut visitor);
    visitor.0
}

impl Subscriber for ConsoleSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        crate::console::write_str(&format_event(event));
        crate::console::write_str("\n");
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Installs the console subscriber as the global default.
pub fn init(level: &str) {
    let dispatch = runtime_abi::tracing::Dispatch::new(ConsoleSubscriber::new(parse_level(level)));
    let _ = runtime_abi::tracing::dispatcher::set_global_default(dispatch);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_fields_are_quoted_as_debug_quotes_ascii() {
        for value in [
            "plain",
            "a \"quoted\" word",
            "back\\slash",
            "line\nbreak\ttab\r",
            "\u{1}\u{7f}",
            "",
        ] {
            let mut out = String::new();
            write_quoted(&mut out, value);
            assert_eq!(out, alloc::format!("{value:?}"), "{value:?}");
        }
        let mut out = String::new();
        write_quoted(&mut out, "café");
        assert_eq!(out, "\"café\"");
    }

    #[test]
    fn floats_print_as_rounded_decimals() {
        for (value, text) in [
            (0.0, "0"),
            (-0.0, "0"),
            (2.5, "2.5"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.333333"),
            (0.0000005, "0.000001"),
            (123_456.789, "123456.789"),
            (1e13, "10000000000000"),
            (1e20, ">=1e19"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let mut out = String::new();
            write_f64(&mut out, value);
            assert_eq!(out, text, "{value}");
        }
    }

    #[test]
    fn u128_prints_as_display_does() {
        let mut x = 0x2545_f491_4f6c_dd1du128 << 64 | 0x9e37_79b9_7f4a_7c15;
        let mut cases = std::vec![
            0,
            1,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX
        ];
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x);
            cases.push(x >> (x % 128));
        }
        for value in cases {
            let mut out = String::new();
            write_u128(&mut out, value);
            assert_eq!(out, std::format!("{value}"));
        }
    }
}
