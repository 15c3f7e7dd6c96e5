//! The console: serial output plus a ring of recent lines (served by the admin `GET /console`).

use alloc::collections::VecDeque;
use alloc::string::String;
use core::fmt;

/// Ring of the most recent complete lines, bounded by line count and bytes.
#[derive(Debug)]
pub struct LineRing {
    lines: VecDeque<String>,
    partial: String,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl LineRing {
    /// An empty ring.
    pub const fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            partial: String::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Appends text (may contain several lines or a partial one).
    pub fn push_str(&mut self, text: &str) {
        for ch in text.chars() {
            if ch == '\n' {
                let line = core::mem::take(&mut self.partial);
                self.bytes += line.len();
                self.lines.push_back(line);
                while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
                    match self.lines.pop_front() {
                        Some(old) => self.bytes -= old.len(),
                        None => break,
                    }
                }
            } else if self.partial.len() < self.max_bytes {
                self.partial.push(ch);
            }
        }
    }

    /// The retained lines, oldest first, newline-terminated.
    pub fn contents(&self) -> String {
        let mut out = String::with_capacity(self.bytes + self.lines.len());
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

static RING: spinning_top::Spinlock<LineRing> =
    spinning_top::Spinlock::new(LineRing::new(512, 64 * 1024));

/// Writes text to the serial console and the ring.
pub fn write_str(text: &str) {
    #[cfg(not(test))]
    crate::drivers::serial::write_bytes(text.as_bytes());
    RING.lock().push_str(text);
}

/// The console ring's contents.
pub fn ring_contents() -> String {
    RING.lock().contents()
}

/// Formats to the console (used by [`kprintln!`](crate::kprintln)).
pub fn write_fmt(args: fmt::Arguments<'_>) {
    let mut text = String::new();
    if fmt::write(&mut text, args).is_ok() {
        write_str(&text);
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {
        $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_recent_complete_lines() {
        let mut ring = LineRing::new(3, 1000);
        ring.push_str("a\nb\nc");
        assert_eq!(ring.contents(), "a\nb\n");
        ring.push_str("\nd\ne\n");
        assert_eq!(ring.contents(), "c\nd\ne\n");
    }

    #[test]
    fn ring_bounded_by_bytes() {
        let mut ring = LineRing::new(100, 10);
        ring.push_str("0123456789\nabc\n");
        assert_eq!(ring.contents(), "abc\n");
    }
}
