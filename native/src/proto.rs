//! A lazy, validating protobuf wire reader for OTLP `ExportTraceServiceRequest`.
//!
//! It keeps only the span header fields (ids, name, kind, times, status code, trace_state), the
//! resource's `service.name` and each span's encoded bytes (for a lazy attribute decode later); it
//! builds nothing for attributes, events and links. It still *walks* them, checking what the
//! Python reference (protobuf's upb parser) checks, so both accept and refuse the same bytes:
//! varints of at most 10 bytes, tags of at most 5 bytes and 32 bits, lengths inside the buffer,
//! UTF-8 in proto3 `string` fields, wire types 6/7 refused, groups closed by their own field
//! number, a nesting limit, and a known field with an unexpected wire type kept as an unknown field
//! (upb's rule, where prost would refuse the message). Repeated occurrences of a singular field
//! follow protobuf's merge rule: scalars last-wins, messages merged (fields concatenated).
//!
//! Why not prost or quick-protobuf: both would either materialize the repeated fields we skip or
//! skip them unchecked, and prost refuses wire-type mismatches upb accepts — the differential test
//! against the Python decoder would fail on hostile input in both directions.

use crate::Error;

pub type R<T> = Result<T, Error>;

/// upb's default nesting limit as the Python protobuf runtime sets it (checked in the
/// differential test against `ParseFromString` with nested AnyValue arrays).
pub const DEPTH_LIMIT: u32 = 100;

pub struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn byte(&mut self) -> R<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(Error::Malformed("truncated varint"))?;
        self.pos += 1;
        Ok(b)
    }

    /// At most 10 bytes; bits beyond 64 are dropped (as upb does).
    #[inline]
    pub fn varint(&mut self) -> R<u64> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64).wrapping_shl(7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Malformed("varint longer than 10 bytes"))
    }

    /// (field number, wire type); a tag is at most 5 bytes and fits 32 bits.
    pub fn tag(&mut self) -> R<(u32, u8)> {
        let start = self.pos;
        let v = self.varint()?;
        if self.pos - start > 5 || v > u32::MAX as u64 {
            return Err(Error::Malformed("bad tag"));
        }
        Ok(((v >> 3) as u32, (v & 7) as u8))
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Malformed("field runs past the end"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn fixed64(&mut self) -> R<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }

    pub fn fixed32(&mut self) -> R<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }

    pub fn delimited(&mut self) -> R<&'a [u8]> {
        let n = self.varint()?;
        if n >= i32::MAX as u64 {
            return Err(Error::Malformed("length too large"));
        }
        self.take(n as usize)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum M {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum F {
    Varint,
    F64,
    F32,
    Bytes,
    Str,
    Msg(M),
}

impl F {
    fn wire_type(self) -> u8 {
        match self {
            F::Varint => 0,
            F::F64 => 1,
            F::F32 => 5,
            F::Bytes | F::Str | F::Msg(_) => 2,
        }
    }
}

/// The fields of opentelemetry-proto 1.x's trace messages, as the Python package compiles them.
fn field(m: M, n: u32) -> Option<F> {
    use F::*;
    Some(match (m, n) {
        (M::Request, 1) => Msg(M::ResourceSpans),
        (M::ResourceSpans, 1) => Msg(M::Resource),
        (M::ResourceSpans, 2) => Msg(M::ScopeSpans),
        (M::ResourceSpans, 3) => Str,
        (M::Resource, 1) => Msg(M::KeyValue),
        (M::Resource, 2) => Varint,
        (M::Resource, 3) => Msg(M::EntityRef),
        (M::EntityRef, 1..=4) => Str,
        (M::ScopeSpans, 1) => Msg(M::Scope),
        (M::ScopeSpans, 2) => Msg(M::Span),
        (M::ScopeSpans, 3) => Str,
        (M::Scope, 1 | 2) => Str,
        (M::Scope, 3) => Msg(M::KeyValue),
        (M::Scope, 4) => Varint,
        (M::Span, 1 | 2 | 4) => Bytes,
        (M::Span, 3 | 5) => Str,
        (M::Span, 6) => Varint,
        (M::Span, 7 | 8) => F64,
        (M::Span, 9) => Msg(M::KeyValue),
        (M::Span, 10 | 12 | 14) => Varint,
        (M::Span, 11) => Msg(M::Event),
        (M::Span, 13) => Msg(M::Link),
        (M::Span, 15) => Msg(M::Status),
        (M::Span, 16) => F32,
        (M::Event, 1) => F64,
        (M::Event, 2) => Str,
        (M::Event, 3) => Msg(M::KeyValue),
        (M::Event, 4) => Varint,
        (M::Link, 1 | 2) => Bytes,
        (M::Link, 3) => Str,
        (M::Link, 4) => Msg(M::KeyValue),
        (M::Link, 5) => Varint,
        (M::Link, 6) => F32,
        (M::Status, 2) => Str,
        (M::Status, 3) => Varint,
        (M::KeyValue, 1) => Str,
        (M::KeyValue, 2) => Msg(M::AnyValue),
        (M::AnyValue, 1) => Str,
        (M::AnyValue, 2 | 3) => Varint,
        (M::AnyValue, 4) => F64,
        (M::AnyValue, 5) => Msg(M::ArrayValue),
        (M::AnyValue, 6) => Msg(M::KvList),
        (M::AnyValue, 7) => Bytes,
        (M::ArrayValue, 1) => Msg(M::AnyValue),
        (M::KvList, 1) => Msg(M::KeyValue),
        _ => return None,
    })
}

/// One known field with its expected wire type, as the visitor sees it.
#[derive(Clone, Copy, Debug)]
pub enum Val<'a> {
    Int(u64),
    Len(&'a [u8]),
}

/// What the visitor did with a known message-typed field: `Walk` lets the reader check it.
#[derive(PartialEq, Eq)]
pub enum Seen {
    Done,
    Walk,
}

/// Read one message of type `m` at nesting `depth`, checking everything upb checks; known fields
/// with their expected wire type go to `visit` (strings already UTF-8 checked). Message-typed
/// fields the visitor answers `Walk` for are checked by `check` (no visitor: the hot path for
/// attributes, events and links).
pub fn walk<'a>(
    buf: &'a [u8],
    m: M,
    depth: u32,
    visit: &mut dyn FnMut(u32, Val<'a>, u32) -> R<Seen>,
) -> R<()> {
    let mut w = Wire::new(buf);
    while !w.at_end() {
        let (num, wt) = w.tag()?;
        match known(m, num, wt)? {
            None => skip_unknown(&mut w, num, wt, depth)?,
            Some(f) => {
                let val = read_known(&mut w, f)?;
                if let (F::Msg(sub), Val::Len(s)) = (f, val) {
                    if depth + 1 > DEPTH_LIMIT {
                        return Err(Error::Malformed("nesting too deep"));
                    }
                    if visit(num, val, depth + 1)? == Seen::Walk {
                        check(s, sub, depth + 1)?;
                    }
                } else {
                    visit(num, val, depth)?;
                }
            }
        }
    }
    Ok(())
}

/// Check one message of type `m` (and everything under it) as upb would parse it, keeping nothing.
pub fn check(buf: &[u8], m: M, depth: u32) -> R<()> {
    let mut w = Wire::new(buf);
    while !w.at_end() {
        let (num, wt) = w.tag()?;
        match known(m, num, wt)? {
            None => skip_unknown(&mut w, num, wt, depth)?,
            Some(f) => {
                if let (F::Msg(sub), Val::Len(s)) = (f, read_known(&mut w, f)?) {
                    if depth + 1 > DEPTH_LIMIT {
                        return Err(Error::Malformed("nesting too deep"));
                    }
                    check(s, sub, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}

/// The known field `num` of `m` when it came with its expected wire type (else it is an unknown
/// field, as upb keeps it); an end-group tag here is outside any group.
#[inline]
fn known(m: M, num: u32, wt: u8) -> R<Option<F>> {
    if wt == 4 {
        return Err(Error::Malformed("end group outside a group"));
    }
    Ok(field(m, num).filter(|f| f.wire_type() == wt))
}

#[inline]
fn read_known<'a>(w: &mut Wire<'a>, f: F) -> R<Val<'a>> {
    let val = match f {
        F::Varint => Val::Int(w.varint()?),
        F::F64 => Val::Int(w.fixed64()?),
        F::F32 => Val::Int(w.fixed32()? as u64),
        F::Bytes | F::Msg(_) => Val::Len(w.delimited()?),
        F::Str => {
            let s = w.delimited()?;
            // most strings are short ASCII: is_ascii is a word-at-a-time scan, from_utf8 is not
            if !s.is_ascii() {
                std::str::from_utf8(s)
                    .map_err(|_| Error::Malformed("string field is not UTF-8"))?;
            }
            Val::Len(s)
        }
    };
    Ok(val)
}

fn skip_unknown(w: &mut Wire, num: u32, wt: u8, depth: u32) -> R<()> {
    if num == 0 {
        return Err(Error::Malformed("field number 0"));
    }
    match wt {
        0 => {
            w.varint()?;
        }
        1 => {
            w.fixed64()?;
        }
        2 => {
            w.delimited()?;
        }
        5 => {
            w.fixed32()?;
        }
        3 => skip_group(w, num, depth + 1)?,
        _ => return Err(Error::Malformed("bad wire type")),
    }
    Ok(())
}

fn skip_group(w: &mut Wire, group: u32, depth: u32) -> R<()> {
    if depth > DEPTH_LIMIT {
        return Err(Error::Malformed("nesting too deep"));
    }
    loop {
        if w.at_end() {
            return Err(Error::Malformed("unterminated group"));
        }
        let (num, wt) = w.tag()?;
        if wt == 4 {
            return if num == group {
                Ok(())
            } else {
                Err(Error::Malformed("mismatched end group"))
            };
        }
        skip_unknown(w, num, wt, depth)?;
    }
}

/// The header of one OTLP span, borrowed from the request bytes.
#[derive(Debug, Default, Clone)]
pub struct OtlpSpan<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub trace_state: &'a str,
    pub name: &'a str,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub status_code: i32,
    /// the encoded `Span` (for a lazy attribute decode when a policy asks)
    pub detail: &'a [u8],
    /// which (resource, scope) occurrence it came from: a fragment's group boundary
    pub group: usize,
    /// which `resource_spans` it came from: its service is `Request::services[resource]`
    pub resource: usize,
}

pub struct Request<'a> {
    pub spans: Vec<OtlpSpan<'a>>,
    /// `service.name` per `resource_spans`, borrowed: one per resource, never one per scope
    /// (a hostile request of many empty scopes under one long name must not copy it per scope)
    pub services: Vec<&'a str>,
}

fn utf8(s: &[u8]) -> &str {
    // walk() checked every known string field before the visitor sees it (so this never fails;
    // a failure would read as "" rather than panic)
    std::str::from_utf8(s).unwrap_or_default()
}

/// Parse a whole request: every byte is checked, only headers are kept.
pub fn parse_request(buf: &[u8]) -> R<Request<'_>> {
    let mut spans: Vec<OtlpSpan> = Vec::new();
    let mut services: Vec<&str> = Vec::new();
    let mut groups = 0usize;
    walk(buf, M::Request, 0, &mut |_num, val, depth| {
        let Val::Len(rs) = val else {
            return Ok(Seen::Done);
        };
        let service = parse_resource_spans(rs, depth, services.len(), &mut groups, &mut spans)?;
        services.push(service);
        Ok(Seen::Done)
    })?;
    Ok(Request { spans, services })
}

/// Its spans go to `spans`; returns its service (the first resource attribute, over every
/// occurrence of `resource` merged, whose last key is service.name: its string value, or "").
fn parse_resource_spans<'a>(
    buf: &'a [u8],
    depth: u32,
    resource: usize,
    groups: &mut usize,
    spans: &mut Vec<OtlpSpan<'a>>,
) -> R<&'a str> {
    let mut service: Option<&[u8]> = None;
    walk(
        buf,
        M::ResourceSpans,
        depth,
        &mut |num, val, depth| match (num, val) {
            (1, Val::Len(res)) => {
                walk(
                    res,
                    M::Resource,
                    depth,
                    &mut |num, val, depth| match (num, val) {
                        (1, Val::Len(kv)) => {
                            let (key, value) = parse_key_value(kv, depth)?;
                            if service.is_none() && key == b"service.name" {
                                service = Some(value);
                            }
                            Ok(Seen::Done)
                        }
                        _ => Ok(Seen::Walk),
                    },
                )?;
                Ok(Seen::Done)
            }
            (2, Val::Len(ss)) => {
                let group = *groups;
                *groups += 1;
                walk(
                    ss,
                    M::ScopeSpans,
                    depth,
                    &mut |num, val, depth| match (num, val) {
                        (2, Val::Len(sp)) => {
                            spans.push(parse_span(sp, depth, group, resource)?);
                            Ok(Seen::Done)
                        }
                        _ => Ok(Seen::Walk),
                    },
                )?;
                Ok(Seen::Done)
            }
            _ => Ok(Seen::Walk),
        },
    )?;
    Ok(service.map(utf8).unwrap_or(""))
}

/// (key, string_value) of a KeyValue (UTF-8 checked); string_value is "" unless the AnyValue's
/// oneof ends on it.
fn parse_key_value(buf: &[u8], depth: u32) -> R<(&[u8], &[u8])> {
    let mut key: &[u8] = b"";
    let mut string_value: &[u8] = b"";
    walk(
        buf,
        M::KeyValue,
        depth,
        &mut |num, val, depth| match (num, val) {
            (1, Val::Len(k)) => {
                key = k;
                Ok(Seen::Done)
            }
            (2, Val::Len(v)) => {
                walk(v, M::AnyValue, depth, &mut |num, val, _| {
                    // every member of the oneof replaces the previous one
                    string_value = match (num, val) {
                        (1, Val::Len(s)) => s,
                        _ => b"",
                    };
                    Ok(Seen::Walk)
                })?;
                Ok(Seen::Done)
            }
            _ => Ok(Seen::Walk),
        },
    )?;
    Ok((key, string_value))
}

fn parse_span(buf: &[u8], depth: u32, group: usize, resource: usize) -> R<OtlpSpan<'_>> {
    let mut s = OtlpSpan {
        detail: buf,
        group,
        resource,
        ..Default::default()
    };
    walk(buf, M::Span, depth, &mut |num, val, depth| {
        match (num, val) {
            (1, Val::Len(b)) => s.trace_id = b,
            (2, Val::Len(b)) => s.span_id = b,
            (3, Val::Len(b)) => s.trace_state = utf8(b),
            (4, Val::Len(b)) => s.parent_span_id = b,
            (5, Val::Len(b)) => s.name = utf8(b),
            (6, Val::Int(v)) => s.kind = v as u32 as i32,
            (7, Val::Int(v)) => s.start = v,
            (8, Val::Int(v)) => s.end = v,
            (15, Val::Len(st)) => {
                walk(st, M::Status, depth, &mut |num, val, _| {
                    if let (3, Val::Int(v)) = (num, val) {
                        s.status_code = v as u32 as i32;
                    }
                    Ok(Seen::Walk)
                })?;
            }
            _ => return Ok(Seen::Walk),
        }
        Ok(Seen::Done)
    })?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn len_field(num: u32, body: &[u8], out: &mut Vec<u8>) {
        varint(((num as u64) << 3) | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn fixed64_field(num: u32, v: u64, out: &mut Vec<u8>) {
        varint(((num as u64) << 3) | 1, out);
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn request(service: &str, span: &[u8]) -> Vec<u8> {
        let mut any = Vec::new();
        len_field(1, service.as_bytes(), &mut any);
        let mut kv = Vec::new();
        len_field(1, b"service.name", &mut kv);
        len_field(2, &any, &mut kv);
        let mut res = Vec::new();
        len_field(1, &kv, &mut res);
        let mut ss = Vec::new();
        len_field(2, span, &mut ss);
        let mut rs = Vec::new();
        len_field(2, &ss, &mut rs);
        len_field(1, &res, &mut rs); // resource after the spans: still their service
        let mut req = Vec::new();
        len_field(1, &rs, &mut req);
        req
    }

    fn span() -> Vec<u8> {
        let mut sp = Vec::new();
        len_field(1, &[7u8; 16], &mut sp);
        len_field(2, &[1u8; 8], &mut sp);
        len_field(5, b"GET /", &mut sp);
        varint(6 << 3, &mut sp);
        varint(2, &mut sp);
        fixed64_field(7, 10, &mut sp);
        fixed64_field(8, 20, &mut sp);
        sp
    }

    #[test]
    fn reads_headers_and_service() {
        let req = request("checkout", &span());
        let r = parse_request(&req).unwrap();
        assert_eq!(r.spans.len(), 1);
        let s = &r.spans[0];
        assert_eq!(s.trace_id, &[7u8; 16]);
        assert_eq!(s.span_id, &[1u8; 8]);
        assert_eq!((s.name, s.kind, s.start, s.end), ("GET /", 2, 10, 20));
        assert_eq!(r.services, vec!["checkout"]);
    }

    #[test]
    fn skips_attributes_but_refuses_bad_utf8_in_them() {
        let mut sp = span();
        let mut any = Vec::new();
        len_field(1, &[0xff, 0xfe], &mut any);
        let mut kv = Vec::new();
        len_field(1, b"k", &mut kv);
        len_field(2, &any, &mut kv);
        len_field(9, &kv, &mut sp);
        assert!(parse_request(&request("s", &sp)).is_err());
    }

    #[test]
    fn wire_type_mismatch_is_an_unknown_field_and_unknown_groups_are_skipped() {
        let mut sp = span();
        varint(5 << 3, &mut sp); // name as a varint: unknown, kept name
        varint(3, &mut sp);
        varint((99 << 3) | 3, &mut sp); // group 99 { field 1 varint } end 99
        varint(1 << 3, &mut sp);
        varint(1, &mut sp);
        varint((99 << 3) | 4, &mut sp);
        let req = request("s", &sp);
        let r = parse_request(&req).unwrap();
        assert_eq!(r.spans[0].name, "GET /");
    }

    #[test]
    fn truncation_anywhere_is_refused_or_reads_a_prefix_without_panicking() {
        let req = request("svc", &span());
        for cut in 0..req.len() {
            let _ = parse_request(&req[..cut]);
        }
        assert!(parse_request(&req[..req.len() - 1]).is_err());
    }

    #[test]
    fn many_empty_scopes_share_one_service_string() {
        let name = "s".repeat(100_000);
        let mut req = request(&name, &span());
        let mut rs = Vec::new();
        let mut any = Vec::new();
        len_field(1, name.as_bytes(), &mut any);
        let mut kv = Vec::new();
        len_field(1, b"service.name", &mut kv);
        len_field(2, &any, &mut kv);
        let mut res = Vec::new();
        len_field(1, &kv, &mut res);
        len_field(1, &res, &mut rs);
        for _ in 0..200_000 {
            rs.extend_from_slice(&[0x12, 0x00]); // an empty scope_spans
        }
        len_field(1, &rs, &mut req);
        let r = parse_request(&req).unwrap();
        assert_eq!(r.services.len(), 2);
        assert_eq!(r.spans.len(), 1);
    }

    #[test]
    fn overlong_varint_and_bad_wire_types_are_refused() {
        assert!(parse_request(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_err());
        assert!(parse_request(&[0x0e]).is_err()); // wire type 6
        assert!(parse_request(&[0x0c]).is_err()); // end group at top level
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        fn nested(levels: usize) -> Vec<u8> {
            let mut inner: Vec<u8> = Vec::new();
            for _ in 0..levels {
                let mut g = Vec::new();
                len_field(1, &inner, &mut g);
                inner = g;
            }
            inner
        }
        // Request>ResourceSpans>Resource>KeyValue... is known nesting; unknown bytes are not walked
        assert!(parse_request(&nested(3)).is_ok());
        let mut deep = Vec::new();
        for _ in 0..(DEPTH_LIMIT + 2) {
            varint((5 << 3) | 3, &mut deep);
        }
        assert!(parse_request(&deep).is_err());
    }
}
