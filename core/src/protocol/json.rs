//! A small JSON pull parser and writer for the wire protocol (RFC 8259).
//!
//! Why not serde_json here: the protocol has a dozen flat frame types, and this codec keeps the browser build
//! small (serde + serde_json were over half of the wasm module) and the native decode path fast (a
//! notification frame decodes without intermediate buffering). It is strict where JSON is (control characters
//! in strings, number grammar, nesting, trailing data) and is checked against serde_json by differential
//! property tests (`core/tests/codec_props.rs`).

use std::borrow::Cow;

use super::DecodeError;

/// Nesting limit of skipped values (`data`): at most `MAX_DEPTH - 1` open containers, as serde_json accepts.
const MAX_DEPTH: usize = 128;

/// A pull parser over one JSON text.
pub(crate) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Reader { text, bytes: text.as_bytes(), pos: 0 }
    }

    #[cold]
    fn error(&self, what: impl std::fmt::Display) -> DecodeError {
        DecodeError::new(format!("{what} at byte {}", self.pos))
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> Result<()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format_args!("expected '{}'", b as char)))
        }
    }

    /// Consumes `{`.
    pub(crate) fn begin_object(&mut self) -> Result<()> {
        self.eat(b'{').map_err(|_| self.error("expected a JSON object"))
    }

    /// The next key of the current object (after `begin_object`), or `None` at its end. `first` tells whether
    /// this is the first key (no comma before it).
    pub(crate) fn next_key(&mut self, first: &mut bool) -> Result<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !*first => self.pos += 1,
            Some(_) if *first => {}
            _ => return Err(self.error("expected ',' or '}'")),
        }
        *first = false;
        let key = self.string()?;
        self.eat(b':')?;
        Ok(Some(key))
    }

    /// Consumes `[`.
    pub(crate) fn begin_array(&mut self) -> Result<()> {
        self.eat(b'[').map_err(|_| self.error("expected an array"))
    }

    /// Whether another element follows in the current array (consuming the separator), `false` at its end.
    pub(crate) fn next_element(&mut self, first: &mut bool) -> Result<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !*first => {
                self.pos += 1;
                *first = false;
                Ok(true)
            }
            Some(_) if *first => {
                *first = false;
                Ok(true)
            }
            _ => Err(self.error("expected ',' or ']'")),
        }
    }

    /// Consumes `null` if it is next.
    pub(crate) fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.bytes[self.pos..].starts_with(b"null") {
            self.pos += 4;
            true
        } else {
            false
        }
    }

    /// A string; borrowed from the input when it has no escapes.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        let start = self.pos + 1;
        // Fast path: jump to the first quote, backslash or control character.
        self.pos = scan_plain(self.bytes, start);
        if self.bytes.get(self.pos) == Some(&b'"') {
            let s = sub(self.text, start, self.pos);
            self.pos += 1;
            return Ok(Cow::Borrowed(s));
        }
        self.string_slow(start)
    }

    /// The rest of a string from `start` (just after its opening quote), `pos` being at its first quote,
    /// backslash or control character.
    #[inline(never)]
    fn string_slow(&mut self, start: usize) -> Result<Cow<'a, str>> {
        match self.bytes.get(self.pos) {
            Some(b'\\') => {}
            Some(_) => return Err(self.error("control character in string")),
            None => return Err(self.error("unterminated string")),
        }
        let mut out = String::from(sub(self.text, start, self.pos));
        loop {
            let Some(&b) = self.bytes.get(self.pos) else { return Err(self.error("unterminated string")) };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&e) = self.bytes.get(self.pos) else { return Err(self.error("unterminated string")) };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.bytes[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("lone surrogate in string"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error("invalid surrogate pair in string"));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.error("lone surrogate in string"));
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.ok_or_else(|| self.error("invalid \\u escape"))?);
                        }
                        _ => return Err(self.error("invalid escape in string")),
                    }
                }
                0..=0x1f => return Err(self.error("control character in string")),
                _ => {
                    // Copy the run up to the next quote, backslash or control character (UTF-8 boundaries are
                    // preserved because all three are ASCII).
                    let run = self.pos;
                    self.pos = scan_plain(self.bytes, self.pos);
                    out.push_str(sub(self.text, run, self.pos));
                }
            }
        }
    }

    /// Skips a string, validating it; allocates only when it has escapes (they are checked by `string`).
    fn skip_string(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        let open = self.pos;
        self.pos = scan_plain(self.bytes, self.pos + 1);
        match self.bytes.get(self.pos) {
            Some(b'"') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'\\') => {
                self.pos = open;
                self.string().map(|_| ())
            }
            Some(_) => Err(self.error("control character in string")),
            None => Err(self.error("unterminated string")),
        }
    }

    /// Consumes `lit` if the input continues with exactly these bytes. Inlined so that the comparison is
    /// specialised to the literal's length.
    #[inline(always)]
    pub(crate) fn lit(&mut self, lit: &[u8]) -> bool {
        if self.bytes[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    /// An unsigned integer (no sign, fraction or exponent).
    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.ws();
        let start = self.pos;
        let rest = &self.bytes[start..];
        // Up to 19 digits cannot overflow; a 20th is checked, a 21st is out of range.
        let mut v: u64 = 0;
        let mut digits = 0;
        for &b in rest.iter().take(19) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v * 10 + u64::from(d);
            digits += 1;
        }
        if digits == 19
            && let Some(&b) = rest.get(19)
            && b.is_ascii_digit()
        {
            match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                Some(n) if !rest.get(20).is_some_and(u8::is_ascii_digit) => {
                    v = n;
                    digits = 20;
                }
                _ => return Err(self.error("integer out of range")),
            }
        }
        if digits == 0 {
            return Err(self.error("expected an unsigned integer"));
        }
        if digits > 1 && rest[0] == b'0' {
            return Err(self.error("leading zero in number"));
        }
        self.pos = start + digits;
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            return Err(self.error("expected an unsigned integer"));
        }
        Ok(v)
    }

    /// `true` or `false`.
    pub(crate) fn bool(&mut self) -> Result<bool> {
        self.ws();
        let rest = &self.bytes[self.pos..];
        if rest.starts_with(b"true") {
            self.pos += 4;
            Ok(true)
        } else if rest.starts_with(b"false") {
            self.pos += 5;
            Ok(false)
        } else {
            Err(self.error("expected true or false"))
        }
    }

    /// Skips one value of any kind, validating it; returns its text.
    pub(crate) fn raw_value(&mut self) -> Result<&'a str> {
        self.ws();
        let start = self.pos;
        self.skip()?;
        Ok(sub(self.text, start, self.pos))
    }

    /// Skips one value without recursion: `objects` is a stack of bits, one per open container (1 = object).
    fn skip(&mut self) -> Result<()> {
        let mut objects: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value.
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    if depth as usize + 1 >= MAX_DEPTH {
                        return Err(self.error("JSON nested too deeply"));
                    }
                    self.pos += 1;
                    let object = open == b'{';
                    objects = (objects << 1) | u128::from(object);
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        objects >>= 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.skip_string()?;
                            self.eat(b':')?;
                        }
                        continue;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't' | b'f') => {
                    self.bool()?;
                }
                Some(b'n') => {
                    if !self.null() {
                        return Err(self.error("invalid literal"));
                    }
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => return Err(self.error("expected a value")),
                None => return Err(self.error("unexpected end of input")),
            }
            // After a value: close containers until one continues with another member or element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = objects & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if object {
                            self.skip_string()?;
                            self.eat(b':')?;
                        }
                        break;
                    }
                    Some(b'}') if object => {}
                    Some(b']') if !object => {}
                    _ if object => return Err(self.error("expected ',' or '}'")),
                    _ => return Err(self.error("expected ',' or ']'")),
                }
                self.pos += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// Skips a number, checking the JSON number grammar.
    fn number(&mut self) -> Result<()> {
        let b = |r: &Self, i: usize| r.bytes.get(i).copied();
        let begin = self.pos;
        let mut exponent = false;
        if b(self, self.pos) == Some(b'-') {
            self.pos += 1;
        }
        match b(self, self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = b(self, self.pos) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        if b(self, self.pos) == Some(b'.') {
            self.pos += 1;
            let start = self.pos;
            while let Some(b'0'..=b'9') = b(self, self.pos) {
                self.pos += 1;
            }
            if self.pos == start {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = b(self, self.pos) {
            exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = b(self, self.pos) {
                self.pos += 1;
            }
            let start = self.pos;
            while let Some(b'0'..=b'9') = b(self, self.pos) {
                self.pos += 1;
            }
            if self.pos == start {
                return Err(self.error("invalid number"));
            }
        }
        if !fits_double(sub(self.text, begin, self.pos), exponent) {
            return Err(self.error("number out of range"));
        }
        Ok(())
    }

    /// Checks that only whitespace remains.
    pub(crate) fn end(&mut self) -> Result<()> {
        if self.peek().is_some() {
            return Err(self.error("trailing characters"));
        }
        Ok(())
    }
}

/// Whether a JSON number (grammar already checked) is within the range of a double. A number too large for one
/// (`1e400`) is refused, as serde_json and the mobile platforms' JSON parsers do; only long numbers or ones with
/// an exponent can be.
#[cfg(not(target_family = "wasm"))]
fn fits_double(number: &str, exponent: bool) -> bool {
    !(exponent || number.len() > 300) || number.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Not checked in the browser build: the float parser is about 15 KiB of wasm, and there JSON.parse has read the frame
/// already (it takes such a number as Infinity), so the check would refuse what the page's own parser accepts.
#[cfg(target_family = "wasm")]
fn fits_double(_: &str, _: bool) -> bool {
    true
}

/// The index of the first byte at or after `i` that is `"`, `\\` or a control character (< 0x20), or
/// `bytes.len()`. Eight bytes at a time: for each word, a byte equal to `"` or `\\` becomes zero after an XOR,
/// and "has a zero byte" / "has a byte below 0x20" are the classic SWAR tests; the lowest flagged byte is always
/// a true match (false positives can only appear above a true one), which is the one taken.
fn scan_plain(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let quote = zero(w ^ (ONES * u64::from(b'"')));
        let backslash = zero(w ^ (ONES * u64::from(b'\\')));
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let found = quote | backslash | control;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// `&s[start..end]` where both ends are known to be character boundaries (they sit next to ASCII bytes the
/// scanner stopped at). `str::get` performs the same boundary check as indexing but has no panic path, which
/// keeps the panic message machinery (`char` Debug escaping, Unicode tables) out of the browser module.
#[inline]
fn sub(s: &str, start: usize, end: usize) -> &str {
    debug_assert!(s.is_char_boundary(start) && s.is_char_boundary(end) && start <= end);
    s.get(start..end).unwrap_or_default()
}

/// Writes `s` as a JSON string, escaped exactly as serde_json does (`"`, `\`, control characters). The bytes
/// that need escaping are exactly those `scan_plain` stops at, so plain runs are copied eight bytes a scan.
pub(crate) fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    loop {
        let i = scan_plain(bytes, start);
        out.push_str(sub(s, start, i));
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push('"');
}

/// Writes `v` in decimal (no `core::fmt`: smaller in the browser build, and faster).
pub(crate) fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Builds one JSON object, member by member, in the order written.
pub(crate) struct ObjectWriter<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    pub(crate) fn new(out: &'o mut String) -> Self {
        out.push('{');
        ObjectWriter { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key); // keys are ASCII identifiers chosen by this crate
        self.out.push_str("\":");
        self.out
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        write_str(out, value);
        self
    }

    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        push_u64(self.key(key), value);
        self
    }

    pub(crate) fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(v) = value {
            self.u64(key, v);
        }
        self
    }

    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    /// A member whose value the caller writes (must write exactly one JSON value).
    pub(crate) fn raw(&mut self, key: &str) -> &mut String {
        self.key(key)
    }

    pub(crate) fn str_array<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, v);
        }
        out.push(']');
        self
    }

    pub(crate) fn finish(&mut self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Result<String> {
        let mut r = Reader::new(text);
        let v = r.string()?.into_owned();
        r.end()?;
        Ok(v)
    }

    #[test]
    fn strings_decode_escapes_and_surrogate_pairs() {
        assert_eq!(s(r#""plain""#).unwrap(), "plain");
        assert_eq!(s(r#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#).unwrap(), "a\"b\\c/d\n\té😀");
        assert!(s(r#""\ud83d""#).is_err(), "lone high surrogate");
        assert!(s(r#""\ude00""#).is_err(), "lone low surrogate");
        assert!(s("\"a\u{1}b\"").is_err(), "raw control character");
        assert!(s(r#""\x""#).is_err());
        assert!(s(r#""open"#).is_err());
    }

    #[test]
    fn word_scanning_finds_the_first_special_byte_at_every_position() {
        for len in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f, 0x0a] {
                for at in 0..=len {
                    let mut bytes = vec![b'a'; len];
                    bytes.extend_from_slice(&[0xc3, 0xa9]); // non-ASCII must not match
                    if at < len {
                        bytes[at] = special;
                        // Specials after the first must not matter.
                        bytes.push(b'"');
                    }
                    let want = if at < len { at } else { bytes.len() };
                    assert_eq!(scan_plain(&bytes, 0), want, "len {len} special {special} at {at}");
                }
            }
        }
        assert_eq!(scan_plain(b"ab\"cd", 3), 5, "nothing special after the quote");
        assert_eq!(scan_plain(b"ab\"cd", 0), 2);
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for ok in ["0", "-0", "1.5", "1e9", "-2.5E-3", "123"] {
            Reader::new(ok).raw_value().unwrap();
        }
        for bad in ["01", "1.", ".5", "-", "1e", "+1"] {
            let mut r = Reader::new(bad);
            assert!(r.raw_value().and_then(|_| r.end()).is_err(), "{bad}");
        }
        assert_eq!(Reader::new("18446744073709551615").u64().unwrap(), u64::MAX);
        assert!(Reader::new("18446744073709551616").u64().is_err());
        assert!(Reader::new("99999999999999999999").u64().is_err());
        assert!(Reader::new("100000000000000000000").u64().is_err());
        assert_eq!(Reader::new("10000000000000000000").u64().unwrap(), 10_000_000_000_000_000_000);
        assert!(Reader::new("1.0").u64().is_err());
        assert!(Reader::new("-1").u64().is_err());
    }

    #[test]
    fn raw_values_are_validated_and_depth_limited() {
        let mut r = Reader::new(r#" {"a":[1,2,{"b":null}],"c":"d"} "#);
        assert_eq!(r.raw_value().unwrap(), r#"{"a":[1,2,{"b":null}],"c":"d"}"#);
        r.end().unwrap();
        assert!(Reader::new(r#"{"a":}"#).raw_value().is_err());
        assert!(Reader::new(r#"[1,]"#).raw_value().is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Reader::new(&deep).raw_value().unwrap_err().message().contains("nested too deeply"));
        // The limit is serde_json's: what it accepts, this accepts.
        for n in [126, 127, 128, 129] {
            let nested = format!("{}1{}", "[{\"k\":".repeat(n / 2), "}]".repeat(n / 2));
            let nested = if n % 2 == 1 { format!("[{nested}]") } else { nested };
            let ours = Reader::new(&nested).raw_value().is_ok();
            assert_eq!(ours, n < MAX_DEPTH, "depth {n}");
            assert_eq!(ours, serde_json::from_str::<serde_json::Value>(&nested).is_ok(), "depth {n}");
        }
    }

    #[test]
    fn writer_escapes_like_serde_json() {
        for input in ["plain", "q\"uote", "back\\slash", "line\nbreak", "\u{1}\u{1f}\u{7f}", "é😀/"] {
            let mut out = String::new();
            write_str(&mut out, input);
            assert_eq!(out, serde_json::to_string(input).unwrap(), "{input:?}");
        }
    }
}
