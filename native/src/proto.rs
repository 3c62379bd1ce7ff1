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
/// fields the visitor answers `Walk` for are checked by `check`.
pub fn walk<'a>(
    buf: &'a [u8],
    m: M,
    depth: u32,
    visit: &mut impl FnMut(u32, Val<'a>, u32) -> R<Seen>,
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

/// Check one message of type `m` (and everything under it) as upb would parse it, keeping nothing:
/// `walk` with a visitor that keeps nothing (a generic one: inlined, so the hot path for
/// attributes, events and links pays no call per field).
pub fn check(buf: &[u8], m: M, depth: u32) -> R<()> {
    walk(buf, m, depth, &mut |_, _, _| Ok(Seen::Walk))
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
    /// how many `attributes` it has (`len(span.attributes)`: occurrences of field 9)
    pub attributes: usize,
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
            (9, Val::Len(_)) => {
                s.attributes += 1;
                return Ok(Seen::Walk);
            }
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

// ------------------------------------------------------------------ re-encoded size
/// How a scalar field of the span's messages is encoded (its size when protobuf writes it again).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Enc {
    /// int32 and enums: stored as 32 bits, written sign-extended (a negative one takes 10 bytes)
    Int32,
    UInt32,
    Int64,
    Bool,
    Fixed64,
    Fixed32,
    Len,
}

fn enc(m: M, n: u32) -> Enc {
    match (m, n) {
        (M::Span, 6) | (M::Status, 3) => Enc::Int32,
        (M::Span, 10 | 12 | 14) | (M::Event, 4) | (M::Link, 5) => Enc::UInt32,
        (M::AnyValue, 3) => Enc::Int64,
        (M::AnyValue, 2) => Enc::Bool,
        (M::Span, 7 | 8) | (M::Event, 1) | (M::AnyValue, 4) => Enc::Fixed64,
        (M::Span, 16) | (M::Link, 6) => Enc::Fixed32,
        _ => Enc::Len,
    }
}

/// The repeated fields under `Span` (all of them messages; no packed scalars here).
fn repeated(m: M, n: u32) -> bool {
    matches!(
        (m, n),
        (M::Span, 9 | 11 | 13) | (M::Event, 3) | (M::Link, 4) | (M::ArrayValue, 1) | (M::KvList, 1)
    )
}

fn varint_size(v: u64) -> u64 {
    (64 - (v | 1).leading_zeros() as u64).div_ceil(7)
}

fn tag_size(num: u32) -> u64 {
    varint_size((num as u64) << 3)
}

fn len_field_size(num: u32, len: u64) -> u64 {
    tag_size(num) + varint_size(len) + len
}

/// A scalar's payload size as protobuf writes it, or None when it is not written (proto3: a
/// zero or empty field outside a oneof is absent).
fn scalar_size(e: Enc, val: Val, in_oneof: bool) -> Option<u64> {
    let (size, zero) = match (e, val) {
        (Enc::Int32, Val::Int(v)) => {
            let v = v as u32 as i32;
            (if v < 0 { 10 } else { varint_size(v as u64) }, v == 0)
        }
        (Enc::UInt32, Val::Int(v)) => (varint_size(v as u32 as u64), v as u32 == 0),
        (Enc::Int64, Val::Int(v)) => (varint_size(v), v == 0),
        (Enc::Bool, Val::Int(v)) => (1, v == 0),
        (Enc::Fixed64, Val::Int(v)) => (8, v == 0),
        (Enc::Fixed32, Val::Int(v)) => (4, v == 0),
        (_, Val::Len(s)) => (varint_size(s.len() as u64) + s.len() as u64, s.is_empty()),
        // a wire type that does not match: known() made it an unknown field, never here
        (_, Val::Int(_)) => (0, true),
    };
    (in_oneof || !zero).then_some(size)
}

/// The size protobuf gives a parsed `Span` (or a message under it) when it writes it again
/// (`Span.ByteSize()` in Python, upb): the Python codec's measure for `ingest.max_span_bytes`.
/// It differs from the wire length where the wire is not canonical: a field holding its default
/// is not written, a repeated occurrence of a singular field replaces (scalar) or merges into
/// (message) the earlier one, varints are rewritten minimal — and a negative int32 (an enum)
/// takes 10 bytes whatever it took on the wire; unknown fields (and known fields with another
/// wire type, which upb keeps as unknown) are written back as they came.
///
/// `chunks` are the message's occurrences in wire order: protobuf merges them as if concatenated.
/// Only for bytes `walk` accepted (a malformed field ends the count; it never panics).
pub fn encoded_size(chunks: &[&[u8]], m: M) -> u64 {
    const FIELDS: usize = 17; // every known field number under Span is at most 16
    let mut total = 0u64; // repeated fields and unknown fields, summed as they come
    let mut last: [Option<Val>; FIELDS] = [None; FIELDS];
    let mut subs: [Vec<&[u8]>; FIELDS] = Default::default();
    let mut member = 0u32; // AnyValue: the oneof member set last
    for chunk in chunks {
        let mut w = Wire::new(chunk);
        while !w.at_end() {
            let start = w.pos;
            let Ok((num, wt)) = w.tag() else { break };
            let f = match known(m, num, wt) {
                Ok(Some(f)) if (num as usize) < FIELDS => f,
                Ok(_) => {
                    if skip_unknown(&mut w, num, wt, 0).is_err() {
                        break;
                    }
                    total += (w.pos - start) as u64;
                    continue;
                }
                Err(_) => break,
            };
            let Ok(val) = read_known(&mut w, f) else {
                break;
            };
            let slot = num as usize;
            if let (F::Msg(sub), Val::Len(s)) = (f, val) {
                if repeated(m, num) {
                    total += len_field_size(num, encoded_size(&[s], sub));
                    continue;
                }
                if m == M::AnyValue && member != num {
                    subs[slot].clear(); // a new oneof member: the earlier message is gone
                }
                subs[slot].push(s);
            } else {
                last[slot] = Some(val);
            }
            if m == M::AnyValue {
                member = num;
            }
        }
    }
    for num in 1..FIELDS as u32 {
        let slot = num as usize;
        let oneof = m == M::AnyValue;
        if oneof && num != member {
            continue;
        }
        match field(m, num) {
            Some(F::Msg(sub)) if !subs[slot].is_empty() => {
                total += len_field_size(num, encoded_size(&subs[slot], sub));
            }
            Some(_) => {
                if let Some(size) = last[slot].and_then(|v| scalar_size(enc(m, num), v, oneof)) {
                    total += tag_size(num) + size;
                }
            }
            None => {}
        }
    }
    total
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

    #[test]
    fn encoded_size_is_the_size_protobuf_writes_again() {
        // (bytes of a span after its IDs, Span.ByteSize() from the Python runtime for them)
        let mut base = Vec::new();
        len_field(1, &[1u8; 16], &mut base);
        len_field(2, &[2u8; 8], &mut base);
        let cases: [(&[u8], u64); 8] = [
            (b"", 28),
            (b"\x30\xff\xff\xff\xff\x0f", 39), // kind -1 in 5 bytes: written in 10
            (b"\x30\x00", 28),                 // a default: not written
            (b"\x30\x82\x80\x00", 30),         // an over-long varint: written minimal
            (b"\x7a\x02\x18\x02\x7a\x03\x12\x01m", 35), // two statuses merge into one
            (b"\x8b\x01\x08\x01\x8c\x01", 34), // an unknown group: kept as it came
            (b"\x28\x01", 30),                 // name as a varint: an unknown field
            (b"\x50\x81\x80\x80\x80\x10", 30), // a uint32 count past 32 bits: truncated
        ];
        for (tail, want) in cases {
            let span = [base.as_slice(), tail].concat();
            assert_eq!(encoded_size(&[&span], M::Span), want, "{tail:x?}");
        }
        // an AnyValue whose oneof moves from a string to an int to an array: only the array stays
        let mut inner = Vec::new();
        len_field(1, b"x", &mut inner);
        let mut array = Vec::new();
        len_field(1, &inner, &mut array);
        let mut any = Vec::new();
        len_field(1, b"s", &mut any);
        any.extend_from_slice(b"\x18\x05");
        len_field(5, &array, &mut any);
        let mut kv = Vec::new();
        len_field(1, b"k", &mut kv);
        len_field(2, &any, &mut kv);
        let mut span = base.clone();
        len_field(9, &kv, &mut span);
        assert_eq!(encoded_size(&[&span], M::Span), 42);
    }
}
