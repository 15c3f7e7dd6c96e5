//! Header fields with case-insensitive lookup.

use alloc::string::String;
use alloc::vec::Vec;

/// One header field as received or to be sent. Names keep their original case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name (a token; compare with [`Headers::get`], which ignores case).
    pub name: String,
    /// The field value, without leading or trailing whitespace. May contain non-UTF-8 bytes.
    pub value: Vec<u8>,
}

/// An ordered list of header fields. Lookups ignore ASCII case; repeated fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<HeaderField>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Headers { fields: Vec::new() }
    }

    /// Appends a field (does not replace an existing one with the same name).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.fields.push(HeaderField {
            name: name.into(),
            value: value.into(),
        });
    }

    /// Removes every field named `name` (any case), then appends `name: value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        let name = name.into();
        self.remove(&name);
        self.push(name, value);
    }

    /// Removes every field named `name` (any case); returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|f| !f.name.eq_ignore_ascii_case(name));
        before.saturating_sub(self.fields.len())
    }

    /// The value of the first field named `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_slice())
    }

    /// The value of the first field named `name`, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| core::str::from_utf8(v).ok())
    }

    /// The values of every field named `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_slice())
    }

    /// Whether a field named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether any field named `name` holds `token` in its comma-separated list (any case),
    /// e.g. `has_token("Connection", "close")`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .any(|v| split_list(v).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
    }

    /// All fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &HeaderField> {
        self.fields.iter()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a HeaderField;
    type IntoIter = core::slice::Iter<'a, HeaderField>;
    fn into_iter(self) -> Self::IntoIter {
        self.fields.iter()
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements.
pub(crate) fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Trims optional whitespace (SP / HTAB) on both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Whether `b` is a `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Whether `v` may be sent as a field value (no CR, LF or NUL; other controls except HTAB rejected).
pub(crate) fn is_valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || b >= 0x20) && !v.contains(&0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_tokens() {
        let mut h = Headers::new();
        h.push("Connection", "Keep-Alive, Upgrade");
        h.push("connection", " close ");
        h.push("X-A", "1");
        assert!(h.has_token("CONNECTION", "keep-alive"));
        assert!(h.has_token("connection", "close"));
        assert!(!h.has_token("connection", "clos"));
        assert_eq!(h.get_all("connection").count(), 2);
        h.set("x-a", "2");
        assert_eq!(h.get("X-A"), Some(&b"2"[..]));
        assert_eq!(h.remove("CONNECTION"), 2);
        assert_eq!(h.len(), 1);
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert!(is_token(b"X-Custom_1"));
        assert!(!is_token(b"a b") && !is_token(b""));
        assert!(is_valid_value(b"a\tb \x80") && !is_valid_value(b"a\r") && !is_valid_value(b"\0"));
    }
}
