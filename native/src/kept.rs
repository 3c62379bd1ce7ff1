//! The kept OTLP path's span writer (`pipeline/codecs/otlp_kept_native.py`): a kept trace's spans
//! written from the request's own bytes as `pipeline/codecs/otlp_kept.py` `KeptWriter` writes
//! them — byte for byte — without a protobuf parse into Python objects.
//!
//! Per kept message and trace ID, [`KeptSpans::write`] walks the wire bytes (`proto::walk`),
//! selects the trace's spans per (resource, scope) group and re-encodes each span the way upb's
//! `SerializeToString` writes the parsed message after `DiscardUnknownFields`: fields in field
//! number order, defaults left out, varints minimal, unknown fields (and known fields of another
//! wire type) dropped, a status written when absent, `trace_state` given the decision's threshold,
//! and the `sampling.*` suffix appended. Only a *plain* span is written here: every singular field
//! at most once, every oneof with at most one member on the wire — what any SDK writes. Anything
//! else (a repeated singular field protobuf would merge or replace, a nested or empty attribute
//! value, a dropped count, a kind or status code outside its enum) is handed back as the span's
//! raw bytes for the Python reference path.
//!
//! Privacy stays decided in Python: the writer asks its `ask` callable once per round of distinct
//! inputs it has no answer for (span names, texts, trace states, encoded `KeyValue`s, a SQL
//! statement with its map's `db.system` entries, `with_threshold` of a trace state), and remembers
//! the answers in bounded memos (entries of at most `MEMO_MAX_BYTES`, cleared when `memo_size` is
//! reached: `KeptWriter`'s bounds). The map-level rules (a repeated key, statements judged in their
//! map's context) are `KeptWriter._map_unchanged`'s.
//!
//! A span whose only change is in its own attributes — each changed one protected on its own, as
//! `Protector.protect_attribute` does it, into at most one attribute under a key no other leaves
//! under (a tokenized e-mail, a redacted secret) — is rebuilt here as well: Python answers such an
//! attribute with what it becomes (its encoded fields, its key, its audit counts: a `Replacement`,
//! remembered like any answer), and the span is written as `KeptWriter._rebuilt` writes it. Any
//! other change (a name, a text, an event's or link's attribute, a SQL statement in its map's
//! context, keys that would merge) takes `_rebuilt` itself.
//!
//! Safety: the byte work runs under `catch_unwind`; a panic hands the whole message to the Python
//! path (`None`), never aborts.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::proto::{self, Seen, Val, M};

/// `otlp_kept._MEMO_MAX_BYTES`: a longer input is asked about each time it comes.
pub const MEMO_MAX_BYTES: usize = 512;
/// `otlp_kept._SYSTEM_KEYS`: what the protector's sql rule reads of a statement's map.
const SYSTEM_KEYS: [&[u8]; 2] = [b"db.system", b"db.system.name"];
/// Rounds of questions per call: attributes, then statements in context; never more.
const MAX_ROUNDS: usize = 4;
const MAX_AS_LONG: u64 = (1 << 63) - 1;

// ------------------------------------------------------------------ wire writing
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, num: u32, wt: u8) {
    put_varint(out, ((num as u64) << 3) | wt as u64);
}

/// A length-delimited field, written even when empty (a message, a oneof member).
fn put_len(out: &mut Vec<u8>, num: u32, body: &[u8]) {
    put_tag(out, num, 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// A proto3 string/bytes field: absent when empty.
fn put_str(out: &mut Vec<u8>, num: u32, body: &[u8]) {
    if !body.is_empty() {
        put_len(out, num, body);
    }
}

fn put_fixed64(out: &mut Vec<u8>, num: u32, v: u64) {
    if v != 0 {
        put_tag(out, num, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_fixed32(out: &mut Vec<u8>, num: u32, v: u64) {
    let v = v as u32;
    if v != 0 {
        put_tag(out, num, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// An int32/enum field: stored as 32 bits, written sign-extended.
fn put_int32(out: &mut Vec<u8>, num: u32, v: u64) {
    let v = v as u32 as i32;
    if v != 0 {
        put_tag(out, num, 0);
        put_varint(out, v as i64 as u64);
    }
}

// ------------------------------------------------------------------ plain messages
/// Not written here: the span takes the Python path (`Plain::No`), or it is written the
/// reference way because its content changes (`Plain::Changed`: known without asking Python).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotHere {
    /// protobuf would merge or replace something: only its parser says what the span holds
    Odd,
    /// `KeptWriter._unchanged` says no whatever the protector answers
    Changed,
}

type P<T> = Result<T, NotHere>;

/// The known fields of one message in wire order (unknown ones dropped, as
/// `DiscardUnknownFields` drops them); strings of this level UTF-8 checked by `walk`.
fn fields(buf: &[u8], m: M, depth: u32) -> P<Vec<(u32, Val<'_>)>> {
    let mut out = Vec::new();
    proto::walk(buf, m, depth, &mut |num, val, _| {
        out.push((num, val));
        Ok(Seen::Done)
    })
    .map_err(|_| NotHere::Odd)?;
    Ok(out)
}

/// The one occurrence of singular fields: any field number twice is `Odd` (`repeated` lists
/// the numbers that may repeat).
fn check_singular(fs: &[(u32, Val)], repeated: &[u32]) -> P<()> {
    let mut seen = 0u32;
    for (num, _) in fs {
        if repeated.contains(num) {
            continue;
        }
        let bit = 1u32 << num.min(&31);
        if seen & bit != 0 {
            return Err(NotHere::Odd);
        }
        seen |= bit;
    }
    Ok(())
}

fn int(fs: &[(u32, Val)], num: u32) -> u64 {
    fs.iter()
        .find_map(|(n, v)| match (n, v) {
            (n, Val::Int(i)) if *n == num => Some(*i),
            _ => None,
        })
        .unwrap_or(0)
}

fn bytes<'a>(fs: &[(u32, Val<'a>)], num: u32) -> &'a [u8] {
    fs.iter()
        .find_map(|(n, v)| match (n, v) {
            (n, Val::Len(s)) if *n == num => Some(*s),
            _ => None,
        })
        .unwrap_or(b"")
}

fn text(b: &[u8]) -> P<&str> {
    std::str::from_utf8(b).map_err(|_| NotHere::Odd)
}

/// An `AnyValue` re-encoded into `out`: a scalar or an array of scalars (`KeptWriter` takes
/// nothing else as it is: a `kvlist`, a nested array or no value at all is `Changed`).
fn any_value(buf: &[u8], depth: u32, in_array: bool, out: &mut Vec<u8>) -> P<()> {
    let fs = fields(buf, M::AnyValue, depth)?;
    match fs.as_slice() {
        [] if in_array => Ok(()),
        [] => Err(NotHere::Changed),
        [(num, val)] => {
            match (*num, *val) {
                (1 | 7, Val::Len(s)) => put_len(out, *num, s),
                (2, Val::Int(v)) => {
                    put_tag(out, 2, 0);
                    out.push((v != 0) as u8);
                }
                (3, Val::Int(v)) => {
                    put_tag(out, 3, 0);
                    put_varint(out, v);
                }
                (4, Val::Int(v)) => {
                    put_tag(out, 4, 1);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                (5, Val::Len(s)) if !in_array => {
                    let mut array = Vec::with_capacity(s.len());
                    for (n, item) in fields(s, M::ArrayValue, depth + 1)? {
                        let (1, Val::Len(item)) = (n, item) else {
                            return Err(NotHere::Odd);
                        };
                        let mut one = Vec::with_capacity(item.len());
                        any_value(item, depth + 2, true, &mut one)?;
                        put_len(&mut array, 1, &one);
                    }
                    put_len(out, 5, &array);
                }
                _ => return Err(NotHere::Changed), // kvlist, a nested array
            }
            Ok(())
        }
        _ => Err(NotHere::Odd), // oneof members replacing each other
    }
}

/// One attribute: its key and its canonical encoding (`KeyValue.SerializeToString()`, the
/// memo key `KeptWriter` uses).
struct Kv<'a> {
    key: &'a [u8],
    encoded: Cow<'a, [u8]>,
}

fn key_value<'a>(buf: &'a [u8], depth: u32, memo: &Answers) -> P<Kv<'a>> {
    if memo.get(Ask::Attribute, buf).is_some() {
        // bytes some attribute was asked about as (its canonical encoding) read as themselves:
        // no need to encode them again, and the key is their first field
        let key = match buf.first() {
            Some(0x0a) => proto::Wire::new(&buf[1..]).delimited().unwrap_or(b""),
            _ => b"",
        };
        return Ok(Kv {
            key,
            encoded: Cow::Borrowed(buf),
        });
    }
    let fs = fields(buf, M::KeyValue, depth)?;
    check_singular(&fs, &[])?;
    let key = bytes(&fs, 1);
    let Some(value) = fs.iter().find_map(|(n, v)| match (n, v) {
        (2, Val::Len(s)) => Some(*s),
        _ => None,
    }) else {
        return Err(NotHere::Changed); // no value: the reference path writes none, of no type
    };
    let mut encoded = Vec::with_capacity(buf.len());
    put_str(&mut encoded, 1, key);
    let mut any = Vec::with_capacity(value.len());
    any_value(value, depth + 1, false, &mut any)?;
    put_len(&mut encoded, 2, &any);
    Ok(Kv {
        key,
        encoded: Cow::Owned(encoded),
    })
}

fn key_values<'a>(fs: &[(u32, Val<'a>)], num: u32, depth: u32, memo: &Answers) -> P<Vec<Kv<'a>>> {
    let mut kvs = Vec::new();
    for (n, v) in fs {
        if let (true, Val::Len(s)) = (*n == num, v) {
            kvs.push(key_value(s, depth + 1, memo)?);
        }
    }
    Ok(kvs)
}

struct Event<'a> {
    time: u64,
    name: &'a str,
    attributes: Vec<Kv<'a>>,
}

struct Link<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    attributes: Vec<Kv<'a>>,
}

/// A kept span as `KeptWriter._span` sees it, and everything needed to write it.
struct SpanPlan<'a> {
    raw: &'a [u8],
    /// the span's fields but trace_state (3), attributes (9), events (11), links (13), status (15)
    fields: Vec<(u32, Val<'a>)>,
    name: &'a str,
    trace_state: &'a str,
    status: Option<(&'a str, u64)>,
    attributes: Vec<Kv<'a>>,
    events: Vec<Event<'a>>,
    links: Vec<Link<'a>>,
}

/// `otlp.check_writable` on the span's bytes, exactly (each event's and link's last field of a
/// number wins, as protobuf reads them): false for what no output can carry.
fn writable(fs: &[(u32, Val)], depth: u32) -> Option<bool> {
    for (num, val) in fs {
        match (num, val) {
            (11, Val::Len(ev)) => {
                let efs = fields(ev, M::Event, depth + 1).ok()?;
                let time = efs
                    .iter()
                    .rev()
                    .find_map(|(n, v)| match (n, v) {
                        (1, Val::Int(t)) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(0);
                if time > MAX_AS_LONG {
                    return Some(false);
                }
            }
            (13, Val::Len(ln)) => {
                let lfs = fields(ln, M::Link, depth + 1).ok()?;
                let last = |want: u32| {
                    lfs.iter()
                        .rev()
                        .find_map(|(n, v)| match (n, v) {
                            (n, Val::Len(s)) if *n == want => Some(s.len()),
                            _ => None,
                        })
                        .unwrap_or(0)
                };
                if last(1) != 16 || last(2) != 8 {
                    return Some(false);
                }
            }
            _ => {}
        }
    }
    Some(true)
}

fn plan_span<'a>(
    raw: &'a [u8],
    fs: Vec<(u32, Val<'a>)>,
    depth: u32,
    memo: &Answers,
) -> P<SpanPlan<'a>> {
    check_singular(&fs, &[9, 11, 13])?;
    // dropped counts are not carried; a kind or status code outside its enum reads as another
    if int(&fs, 10) as u32 != 0 || int(&fs, 12) as u32 != 0 || int(&fs, 14) as u32 != 0 {
        return Err(NotHere::Changed);
    }
    if !(0..6).contains(&(int(&fs, 6) as u32 as i32)) {
        return Err(NotHere::Changed);
    }
    let mut status = None;
    if let Some(st) = fs.iter().find_map(|(n, v)| match (n, v) {
        (15, Val::Len(s)) => Some(*s),
        _ => None,
    }) {
        let sfs = fields(st, M::Status, depth + 1)?;
        check_singular(&sfs, &[])?;
        let code = int(&sfs, 3);
        if !(0..3).contains(&(code as u32 as i32)) {
            return Err(NotHere::Changed);
        }
        status = Some((text(bytes(&sfs, 2))?, code));
    }
    let attributes = key_values(&fs, 9, depth, memo)?;
    let mut events = Vec::new();
    let mut links = Vec::new();
    for (num, val) in &fs {
        match (num, val) {
            (11, Val::Len(ev)) => {
                let efs = fields(ev, M::Event, depth + 1)?;
                check_singular(&efs, &[3])?;
                if int(&efs, 4) as u32 != 0 {
                    return Err(NotHere::Changed);
                }
                events.push(Event {
                    time: int(&efs, 1),
                    name: text(bytes(&efs, 2))?,
                    attributes: key_values(&efs, 3, depth + 1, memo)?,
                });
            }
            (13, Val::Len(ln)) => {
                let lfs = fields(ln, M::Link, depth + 1)?;
                check_singular(&lfs, &[4])?;
                if int(&lfs, 5) as u32 != 0 || int(&lfs, 6) as u32 != 0 {
                    return Err(NotHere::Changed);
                }
                links.push(Link {
                    trace_id: bytes(&lfs, 1),
                    span_id: bytes(&lfs, 2),
                    trace_state: text(bytes(&lfs, 3))?,
                    attributes: key_values(&lfs, 4, depth + 1, memo)?,
                });
            }
            _ => {}
        }
    }
    Ok(SpanPlan {
        raw,
        name: text(bytes(&fs, 5))?,
        trace_state: text(bytes(&fs, 3))?,
        status,
        attributes,
        events,
        links,
        fields: fs
            .into_iter()
            .filter(|(n, _)| !matches!(n, 3 | 9 | 11 | 13 | 15))
            .collect(),
    })
}

/// The span as `SerializeToString` writes it after `KeptWriter._span`'s changes (status set,
/// `trace_state` given), then `suffix`: the `ScopeSpans.spans` field carrying it. With
/// `replaced` (an answer per attribute, see `Asker::map`), the span `KeptWriter._rebuilt` writes
/// instead: each replaced attribute as its answer's fields, and the `suffix` attributes after the
/// span's own (the reference path's dict appends them; all else is as the plain span's, its
/// texts being unchanged).
fn write_span(
    plan: &SpanPlan,
    trace_state: &[u8],
    suffix: &[u8],
    replaced: &[Option<Vec<u8>>],
) -> Vec<u8> {
    let rebuilt = !replaced.is_empty();
    let mut sp = Vec::with_capacity(plan.raw.len() + suffix.len() + 32);
    let single = |num: u32| plan.fields.iter().find(|(n, _)| *n == num).map(|(_, v)| *v);
    for num in 1..=16u32 {
        match (num, single(num)) {
            (3, _) => put_str(&mut sp, 3, trace_state),
            (9, _) if rebuilt => {
                for (kv, a) in plan.attributes.iter().zip(replaced) {
                    match a.as_deref().and_then(replacement) {
                        Some(r) => sp.extend_from_slice(r.fields),
                        None => put_len(&mut sp, 9, &kv.encoded),
                    }
                }
                sp.extend_from_slice(suffix);
            }
            (9, _) => {
                for kv in &plan.attributes {
                    put_len(&mut sp, 9, &kv.encoded);
                }
            }
            (11, _) => {
                for ev in &plan.events {
                    let mut e = Vec::new();
                    put_fixed64(&mut e, 1, ev.time);
                    put_str(&mut e, 2, ev.name.as_bytes());
                    for kv in &ev.attributes {
                        put_len(&mut e, 3, &kv.encoded);
                    }
                    put_len(&mut sp, 11, &e);
                }
            }
            (13, _) => {
                for ln in &plan.links {
                    let mut l = Vec::new();
                    put_str(&mut l, 1, ln.trace_id);
                    put_str(&mut l, 2, ln.span_id);
                    put_str(&mut l, 3, ln.trace_state.as_bytes());
                    for kv in &ln.attributes {
                        put_len(&mut l, 4, &kv.encoded);
                    }
                    put_len(&mut sp, 13, &l);
                }
            }
            (15, _) => {
                let mut s = Vec::new();
                if let Some((message, code)) = plan.status {
                    put_str(&mut s, 2, message.as_bytes());
                    put_int32(&mut s, 3, code);
                }
                put_len(&mut sp, 15, &s);
            }
            (_, None) => {}
            (1 | 2 | 4 | 5, Some(Val::Len(s))) => put_str(&mut sp, num, s),
            (6, Some(Val::Int(v))) => put_int32(&mut sp, 6, v),
            (7 | 8, Some(Val::Int(v))) => put_fixed64(&mut sp, num, v),
            (16, Some(Val::Int(v))) => put_fixed32(&mut sp, 16, v),
            _ => {} // dropped counts: a span holding one is never written here
        }
    }
    if !rebuilt {
        sp.extend_from_slice(suffix);
    }
    let mut field = Vec::with_capacity(sp.len() + 6);
    put_len(&mut field, 2, &sp);
    field
}

// ------------------------------------------------------------------ the request
/// One (resource, scope) group of the trace: its envelope as a `ResourceSpans` without
/// `scope_spans` and a `ScopeSpans` without `spans` (parsed by protobuf as the whole request's
/// parse sees them: each occurrence of `resource`/`scope` merged, the last schema URL), and the
/// trace's spans in it.
struct Group<'a> {
    resource_head: Vec<u8>,
    scope_head: Vec<u8>,
    spans: Vec<&'a [u8]>,
}

/// Depth of a span in the request (Request > ResourceSpans > ScopeSpans > Span), as `walk` counts.
const SPAN_DEPTH: u32 = 3;

fn groups<'a>(value: &'a [u8], trace_id: &[u8]) -> proto::R<Vec<Group<'a>>> {
    let mut out = Vec::new();
    proto::walk(value, M::Request, 0, &mut |_, val, depth| {
        let Val::Len(rs) = val else {
            return Ok(Seen::Done);
        };
        let mut resource_head = Vec::new();
        let mut scopes: Vec<&[u8]> = Vec::new();
        let mut url: &[u8] = b"";
        proto::walk(rs, M::ResourceSpans, depth, &mut |num, val, _| {
            match (num, val) {
                (1, Val::Len(res)) => put_len(&mut resource_head, 1, res),
                (2, Val::Len(ss)) => scopes.push(ss),
                (3, Val::Len(u)) => url = u,
                _ => {}
            }
            Ok(Seen::Done)
        })?;
        put_str(&mut resource_head, 3, url);
        for ss in scopes {
            let mut scope_head = Vec::new();
            let mut url: &[u8] = b"";
            let mut spans = Vec::new();
            proto::walk(ss, M::ScopeSpans, depth + 1, &mut |num, val, _| {
                match (num, val) {
                    (1, Val::Len(scope)) => put_len(&mut scope_head, 1, scope),
                    (2, Val::Len(sp)) => {
                        spans.extend((span_trace_id(sp)? == trace_id).then_some(sp))
                    }
                    (3, Val::Len(u)) => url = u,
                    _ => {}
                }
                Ok(Seen::Done)
            })?;
            put_str(&mut scope_head, 3, url);
            if !spans.is_empty() {
                out.push(Group {
                    resource_head: resource_head.clone(),
                    scope_head,
                    spans,
                });
            }
        }
        Ok(Seen::Done)
    })?;
    Ok(out)
}

/// A span's trace ID as protobuf reads it (its last `trace_id` field).
fn span_trace_id(sp: &[u8]) -> proto::R<&[u8]> {
    let mut id: &[u8] = b"";
    proto::walk(sp, M::Span, SPAN_DEPTH, &mut |num, val, _| {
        if let (1, Val::Len(b)) = (num, val) {
            id = b;
        }
        Ok(Seen::Done)
    })?;
    Ok(id)
}

// ------------------------------------------------------------------ answers
/// What the writer asks Python (`otlp_kept_native.Questions`), by kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
enum Ask {
    Name = 0,
    Text = 1,
    TraceState = 2,
    /// an encoded KeyValue: 1 unchanged, 0 changed, 2 "in context" (ask with its map's db.system)
    Attribute = 3,
    /// an encoded KeyValue with its map's db.system entries (len-prefixed after it)
    InContext = 4,
    /// `with_threshold(trace_state, th)`
    Threshold = 5,
}

/// Answers per kind by input bytes: the bounded memo across calls, or one call's own.
#[derive(Default)]
struct Answers {
    kinds: [HashMap<Vec<u8>, Vec<u8>>; 6],
}

impl Answers {
    fn get(&self, ask: Ask, key: &[u8]) -> Option<&[u8]> {
        self.kinds[ask as usize].get(key).map(|v| v.as_slice())
    }

    fn insert(&mut self, ask: Ask, key: Vec<u8>, answer: Vec<u8>) {
        self.kinds[ask as usize].insert(key, answer);
    }

    fn len(&self) -> usize {
        self.kinds.iter().map(|m| m.len()).sum()
    }

    fn clear(&mut self) {
        self.kinds.iter_mut().for_each(|m| m.clear());
    }
}

/// An attribute's answer when protection changes it in a way the writer can write itself
/// (`otlp_kept_native.NativeKeptWriter._attribute`): `[3]`, then the `Span.attributes` field
/// bytes it leaves as (none when dropped), its output key (0: dropped, else 1 and the key) and its
/// audit counts in order — lengths and numbers as varints.
const REPLACED: u8 = 3;

struct Replacement<'a> {
    fields: &'a [u8],
    key: Option<&'a [u8]>,
    counts: Vec<(&'a [u8], u64)>,
}

fn replacement(answer: &[u8]) -> Option<Replacement<'_>> {
    let (&REPLACED, rest) = answer.split_first()? else {
        return None;
    };
    let mut w = proto::Wire::new(rest);
    let fields = w.delimited().ok()?;
    let key = match w.varint().ok()? {
        0 => None,
        _ => Some(w.delimited().ok()?),
    };
    let n = w.varint().ok()?;
    let mut counts = Vec::new();
    for _ in 0..n {
        let name = w.delimited().ok()?;
        counts.push((name, w.varint().ok()?));
    }
    Some(Replacement {
        fields,
        key,
        counts,
    })
}

/// `Replacement` as it is remembered (see there).
fn encode_replacement(fields: &[u8], key: Option<&[u8]>, counts: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut out = vec![REPLACED];
    put_varint(&mut out, fields.len() as u64);
    out.extend_from_slice(fields);
    match key {
        None => out.push(0),
        Some(k) => {
            out.push(1);
            put_varint(&mut out, k.len() as u64);
            out.extend_from_slice(k);
        }
    }
    put_varint(&mut out, counts.len() as u64);
    for (name, n) in counts {
        put_varint(&mut out, name.len() as u64);
        out.extend_from_slice(name);
        put_varint(&mut out, *n);
    }
    out
}

/// A question not answered yet, and what it is about.
struct Question {
    ask: Ask,
    key: Vec<u8>,
    /// for `InContext`: the statement and its map's system entries; `Threshold`: the trace state
    parts: Vec<Vec<u8>>,
}

/// Three-valued: a span's answer so far.
enum State {
    Unchanged,
    Changed,
    Unknown,
}

struct Asker<'m> {
    memo: &'m Answers,
    call: &'m Answers,
    questions: Vec<Question>,
    asked: HashSet<(Ask, Vec<u8>)>,
}

impl<'m> Asker<'m> {
    fn answer(
        &mut self,
        ask: Ask,
        key: &[u8],
        parts: impl FnOnce() -> Vec<Vec<u8>>,
    ) -> Option<&'m [u8]> {
        let (memo, call) = (self.memo, self.call);
        if let Some(a) = memo.get(ask, key).or_else(|| call.get(ask, key)) {
            return Some(a);
        }
        if self.asked.insert((ask, key.to_vec())) {
            self.questions.push(Question {
                ask,
                key: key.to_vec(),
                parts: parts(),
            });
        }
        None
    }

    /// A yes/no question: Some(answer) or None (asked).
    fn yes(&mut self, ask: Ask, key: &[u8]) -> Option<bool> {
        self.answer(ask, key, Vec::new)
            .map(|a| a.first() == Some(&1))
    }

    /// `KeptWriter._attributes_unchanged` of one map. With `replaced`, an attribute whose
    /// answer is a `Replacement` counts as written too (the map is then written with it, as
    /// `KeptWriter._rebuilt` writes it): `replaced` gets each attribute's answer in map order
    /// (None: as it is) when any is one — unless the output keys would repeat (the reference
    /// path's dict would merge them), which is `Changed`.
    fn map(&mut self, kvs: &[Kv], replaced: Option<&mut Vec<Option<Vec<u8>>>>) -> State {
        if kvs.is_empty() {
            return State::Unchanged;
        }
        let rebuild = replaced.is_some();
        let mut unknown = false;
        let mut statements = Vec::new();
        let mut answers: Vec<Option<&[u8]>> = Vec::with_capacity(kvs.len());
        let mut any_replaced = false;
        for kv in kvs {
            match self.answer(Ask::Attribute, &kv.encoded, Vec::new) {
                None => {
                    unknown = true;
                    answers.push(None);
                }
                Some([1]) => answers.push(None),
                Some([2]) => {
                    statements.push(kv);
                    answers.push(None);
                }
                Some(a) if rebuild && a.first() == Some(&REPLACED) => {
                    any_replaced = true;
                    answers.push(Some(a));
                }
                Some(_) => return State::Changed,
            }
        }
        let mut keys: HashSet<&[u8]> = HashSet::with_capacity(kvs.len());
        if !kvs.iter().all(|kv| keys.insert(kv.key)) {
            return State::Changed; // a repeated key: the reference path keeps one
        }
        if unknown {
            return State::Unknown;
        }
        if any_replaced {
            let mut out_keys: HashSet<&[u8]> = HashSet::with_capacity(kvs.len());
            for (kv, a) in kvs.iter().zip(&answers) {
                let key = match a {
                    None => Some(kv.key),
                    Some(a) => match replacement(a) {
                        Some(r) => r.key,
                        None => return State::Changed,
                    },
                };
                if key.is_some_and(|k| !out_keys.insert(k)) {
                    return State::Changed; // two attributes leave under one key
                }
            }
        }
        let systems: Vec<&[u8]> = kvs
            .iter()
            .filter(|kv| SYSTEM_KEYS.contains(&kv.key))
            .map(|kv| &*kv.encoded)
            .collect();
        let mut state = State::Unchanged;
        for kv in statements {
            let mut key = Vec::with_capacity(kv.encoded.len() + 32);
            for part in std::iter::once(&*kv.encoded).chain(systems.iter().copied()) {
                put_varint(&mut key, part.len() as u64);
                key.extend_from_slice(part);
            }
            let parts = || {
                std::iter::once(kv.encoded.to_vec())
                    .chain(systems.iter().map(|s| s.to_vec()))
                    .collect()
            };
            match self.answer(Ask::InContext, &key, parts).as_deref() {
                None => state = State::Unknown,
                Some([1]) => {}
                Some(_) => return State::Changed,
            }
        }
        if let (true, Some(replaced)) = (any_replaced, replaced) {
            *replaced = answers.iter().map(|a| a.map(|a| a.to_vec())).collect();
        }
        state
    }

    /// `KeptWriter._unchanged` of a plain span, and its written trace state (`threshold`) —
    /// or, where only its own attributes change and each as a `Replacement` says, the span
    /// `KeptWriter._rebuilt` writes: the answers per attribute (empty: written as it is).
    fn span(
        &mut self,
        plan: &SpanPlan,
        privacy: bool,
        threshold: Option<u64>,
    ) -> (State, Option<Vec<u8>>, Vec<Option<Vec<u8>>>) {
        let mut unknown = false;
        let mut replaced = Vec::new();
        let check = |state: State, unknown: &mut bool| match state {
            State::Changed => Err(()),
            State::Unknown => {
                *unknown = true;
                Ok(())
            }
            State::Unchanged => Ok(()),
        };
        let yes = |a: Option<bool>| match a {
            None => State::Unknown,
            Some(true) => State::Unchanged,
            Some(false) => State::Changed,
        };
        let verdict: Result<(), ()> = (|| {
            if privacy {
                check(yes(self.yes(Ask::Name, plan.name.as_bytes())), &mut unknown)?;
                if let Some((message, _)) = plan.status.filter(|(m, _)| !m.is_empty()) {
                    check(yes(self.yes(Ask::Text, message.as_bytes())), &mut unknown)?;
                }
                if !plan.trace_state.is_empty() {
                    check(
                        yes(self.yes(Ask::TraceState, plan.trace_state.as_bytes())),
                        &mut unknown,
                    )?;
                }
            }
            check(
                self.map(&plan.attributes, Some(&mut replaced)),
                &mut unknown,
            )?;
            for ev in &plan.events {
                check(self.map(&ev.attributes, None), &mut unknown)?;
                if privacy {
                    check(yes(self.yes(Ask::Text, ev.name.as_bytes())), &mut unknown)?;
                }
            }
            for ln in &plan.links {
                check(self.map(&ln.attributes, None), &mut unknown)?;
                if privacy && !ln.trace_state.is_empty() {
                    check(
                        yes(self.yes(Ask::TraceState, ln.trace_state.as_bytes())),
                        &mut unknown,
                    )?;
                }
            }
            Ok(())
        })();
        if verdict.is_err() {
            return (State::Changed, None, Vec::new());
        }
        let trace_state = match threshold {
            None => Some(plan.trace_state.as_bytes().to_vec()),
            Some(th) => {
                let mut key = th.to_le_bytes().to_vec();
                key.extend_from_slice(plan.trace_state.as_bytes());
                let ts = plan.trace_state.as_bytes().to_vec();
                self.answer(Ask::Threshold, &key, || vec![ts])
                    .map(|a| a.to_vec())
            }
        };
        if unknown || trace_state.is_none() {
            return (State::Unknown, None, Vec::new());
        }
        (State::Unchanged, trace_state, replaced)
    }
}

// ------------------------------------------------------------------ Python
/// The native half of `pipeline.codecs.otlp_kept_native.NativeKeptWriter`: its memo of answers
/// (one protector's: cleared by `clear` when the protector changes).
#[pyclass(module = "pipeline._native")]
pub struct KeptSpans {
    memo: Answers,
    memo_size: usize,
}

/// A span of the output: written here, or the Python path's — `changed`: known to change
/// (`KeptWriter._rebuilt`), else for `KeptWriter._span` to decide (a span this writer does not
/// read the way protobuf does: its own check then writes it as it would have).
enum Out<'a> {
    /// the field, its links' trace IDs, and — for a span rebuilt here — its audit counts
    Written(Vec<u8>, Vec<&'a [u8]>, Option<Vec<(String, u64)>>),
    Python(&'a [u8], bool),
}

impl KeptSpans {
    fn remember(&mut self, ask: Ask, key: Vec<u8>, answer: Vec<u8>) {
        if key.len() > MEMO_MAX_BYTES + 8 {
            return; // (+8: a threshold's key carries it before the trace state)
        }
        // KeptWriter's memos: each of its kinds cleared when full
        if self.memo.kinds[ask as usize].len() >= self.memo_size {
            self.memo.kinds[ask as usize].clear();
        }
        self.memo.insert(ask, key, answer);
    }
}

fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok().flatten()
}

#[pymethods]
impl KeptSpans {
    #[new]
    #[pyo3(signature = (memo_size = 16_384))]
    fn new(memo_size: usize) -> Self {
        KeptSpans {
            memo: Answers::default(),
            memo_size: memo_size.max(1),
        }
    }

    /// Forget every answer (another protector).
    fn clear(&mut self) {
        self.memo.clear();
    }

    fn __len__(&self) -> usize {
        self.memo.len()
    }

    /// The kept spans of `trace_id` in the request `value`: None when the whole message takes
    /// the Python path (a span no output can carry: it reports it; bytes this reader refuses),
    /// else per (resource, scope) group `(resource_head, scope_head, spans)`, each span either a
    /// `wire_span((field, link_trace_ids))` written here (a `WireSpan`: `tuple.__new__` of it) —
    /// `[wire_span, counts]` when its attributes were replaced here (`Replacement`: the span
    /// `KeptWriter._rebuilt` writes, and its audit counts in order) —, or for the Python path its
    /// raw bytes (`KeptWriter._span` decides) or `(raw,)` (known to change: `KeptWriter._rebuilt`).
    /// `ask(questions)` answers a list of `(kind, input, extra)` in order (see `Ask`; an
    /// attribute's answer may be a `Replacement`'s `(fields, key or None, counts)`).
    #[pyo3(signature = (value, trace_id, suffix, threshold, privacy, ask, wire_span))]
    #[allow(clippy::too_many_arguments)]
    fn write<'py>(
        &mut self,
        py: Python<'py>,
        value: &[u8],
        trace_id: &[u8],
        suffix: &[u8],
        threshold: Option<u64>,
        privacy: bool,
        ask: &Bound<'py, PyAny>,
        wire_span: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(groups) = guarded(|| groups(value, trace_id).ok()) else {
            return Ok(None);
        };
        // plans (None: the span goes the Python way); a span no output can carry: all of it does
        let Some(plans) = guarded(|| {
            let mut plans = Vec::new();
            for g in &groups {
                for sp in &g.spans {
                    let fs = fields(sp, M::Span, SPAN_DEPTH).ok()?;
                    if !writable(&fs, SPAN_DEPTH)? {
                        return None;
                    }
                    plans.push(plan_span(sp, fs, SPAN_DEPTH, &self.memo));
                }
            }
            Some(plans)
        }) else {
            return Ok(None);
        };
        let mut call = Answers::default();
        // per span, once known: Some(Ok((ts, replaced))) written with this trace state (and these
        // attributes replaced: `Asker::map`), Some(Err(changed)) not
        type Done = Option<Result<(Vec<u8>, Vec<Option<Vec<u8>>>), bool>>;
        let mut done: Vec<Done> = vec![None; plans.len()];
        for round in 0..=MAX_ROUNDS {
            let Some(questions) = guarded(|| {
                let mut asker = Asker {
                    memo: &self.memo,
                    call: &call,
                    questions: Vec::new(),
                    asked: HashSet::new(),
                };
                for (i, plan) in plans.iter().enumerate() {
                    if done[i].is_some() {
                        continue;
                    }
                    let plan = match plan {
                        Ok(plan) => plan,
                        Err(why) => {
                            done[i] = Some(Err(*why == NotHere::Changed));
                            continue;
                        }
                    };
                    match asker.span(plan, privacy, threshold) {
                        (State::Unchanged, Some(ts), replaced) => {
                            done[i] = Some(Ok((ts, replaced)))
                        }
                        (State::Changed, ..) => done[i] = Some(Err(true)),
                        (State::Unknown, ..) if round == MAX_ROUNDS => done[i] = Some(Err(false)),
                        _ => {}
                    }
                }
                Some(asker.questions)
            }) else {
                return Ok(None);
            };
            if questions.is_empty() {
                break;
            }
            let list = PyList::empty(py);
            for q in &questions {
                let item = match q.ask {
                    Ask::InContext => (
                        q.ask as u8,
                        PyBytes::new(py, &q.parts[0]).into_any(),
                        PyList::new(py, q.parts[1..].iter().map(|p| PyBytes::new(py, p)))?
                            .into_any(),
                    ),
                    Ask::Threshold => (
                        q.ask as u8,
                        std::str::from_utf8(&q.parts[0])
                            .unwrap_or_default()
                            .into_pyobject(py)?
                            .into_any(),
                        threshold.unwrap_or(0).into_pyobject(py)?.into_any(),
                    ),
                    Ask::Attribute => (
                        q.ask as u8,
                        PyBytes::new(py, &q.key).into_any(),
                        py.None().into_bound(py),
                    ),
                    _ => (
                        q.ask as u8,
                        std::str::from_utf8(&q.key)
                            .unwrap_or_default()
                            .into_pyobject(py)?
                            .into_any(),
                        py.None().into_bound(py),
                    ),
                };
                list.append(item)?;
            }
            let answers = ask.call1((list,))?;
            for (q, a) in questions.into_iter().zip(answers.try_iter()?) {
                let a = a?;
                let answer = match q.ask {
                    Ask::Threshold => a.extract::<String>()?.into_bytes(),
                    Ask::Attribute => match a.extract::<u8>() {
                        Ok(n) => vec![n],
                        Err(_) => {
                            // (fields, output key or None, counts): see `Replacement`
                            let (fields, key, counts): (
                                Bound<'py, PyBytes>,
                                Option<String>,
                                Vec<(String, u64)>,
                            ) = a.extract()?;
                            let counts: Vec<(Vec<u8>, u64)> = counts
                                .into_iter()
                                .map(|(k, n)| (k.into_bytes(), n))
                                .collect();
                            encode_replacement(
                                fields.as_bytes(),
                                key.as_deref().map(str::as_bytes),
                                &counts,
                            )
                        }
                    },
                    _ => vec![a.is_truthy()? as u8],
                };
                call.insert(q.ask, q.key.clone(), answer.clone());
                self.remember(q.ask, q.key, answer);
            }
        }
        let Some(written) = guarded(|| {
            let mut out = Vec::with_capacity(plans.len());
            for (i, plan) in plans.iter().enumerate() {
                let sp = match (plan, &done[i]) {
                    (Ok(plan), Some(Ok((ts, replaced)))) => Out::Written(
                        write_span(plan, ts, suffix, replaced),
                        plan.links.iter().map(|l| l.trace_id).collect(),
                        (!replaced.is_empty()).then(|| {
                            let answers = replaced.iter().flatten().filter_map(|a| replacement(a));
                            answers
                                .flat_map(|r| r.counts)
                                .map(|(name, n)| (String::from_utf8_lossy(name).into_owned(), n))
                                .collect()
                        }),
                    ),
                    (_, Some(Err(true))) => Out::Python(groups_span(&groups, i), true),
                    _ => Out::Python(groups_span(&groups, i), false),
                };
                out.push(sp);
            }
            Some(out)
        }) else {
            return Ok(None);
        };
        let out = PyList::empty(py);
        let mut written = written.into_iter();
        for g in &groups {
            let spans = PyList::empty(py);
            for _ in &g.spans {
                match written.next() {
                    Some(Out::Written(field, links, counts)) => {
                        let links = PyTuple::new(py, links.iter().map(|l| PyBytes::new(py, l)))?;
                        let pair = (PyBytes::new(py, &field), links);
                        let span = wire_span.call1((pair,))?;
                        match counts {
                            None => spans.append(span)?,
                            // rebuilt here: [span, its audit counts in order]
                            Some(counts) => spans.append(PyList::new(
                                py,
                                [span, PyList::new(py, counts)?.into_any()],
                            )?)?,
                        }
                    }
                    Some(Out::Python(raw, false)) => spans.append(PyBytes::new(py, raw))?,
                    Some(Out::Python(raw, true)) => {
                        spans.append(PyTuple::new(py, [PyBytes::new(py, raw)])?)?
                    }
                    None => return Ok(None),
                }
            }
            out.append((
                PyBytes::new(py, &g.resource_head),
                PyBytes::new(py, &g.scope_head),
                spans,
            ))?;
        }
        Ok(Some(out))
    }
}

/// The `i`-th span of the groups, in order.
fn groups_span<'a>(groups: &[Group<'a>], mut i: usize) -> &'a [u8] {
    for g in groups {
        if i < g.spans.len() {
            return g.spans[i];
        }
        i -= g.spans.len();
    }
    b""
}

/// Adds this module's class to `pipeline._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KeptSpans>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 16] = [7; 16];

    fn kv(key: &str, value: &str) -> Vec<u8> {
        let mut any = Vec::new();
        put_len(&mut any, 1, value.as_bytes());
        let mut kv = Vec::new();
        put_len(&mut kv, 1, key.as_bytes());
        put_len(&mut kv, 2, &any);
        kv
    }

    /// A span as the bench traffic writes it: attributes after the status (out of field order).
    fn span() -> Vec<u8> {
        let mut sp = Vec::new();
        put_len(&mut sp, 1, &TID);
        put_len(&mut sp, 2, &[1; 8]);
        put_len(&mut sp, 5, b"GET /");
        put_int32(&mut sp, 6, 2);
        put_fixed64(&mut sp, 7, 10);
        put_fixed64(&mut sp, 8, 20);
        let mut status = Vec::new();
        put_int32(&mut status, 3, 2);
        put_len(&mut sp, 15, &status);
        put_len(&mut sp, 9, &kv("http.route", "/cart"));
        sp
    }

    fn request(span: &[u8]) -> Vec<u8> {
        let mut ss = Vec::new();
        put_len(&mut ss, 2, span);
        let mut rs = Vec::new();
        put_len(&mut rs, 1, &[]);
        put_len(&mut rs, 2, &ss);
        let mut req = Vec::new();
        put_len(&mut req, 1, &rs);
        req
    }

    #[test]
    fn a_panic_hands_the_message_to_the_python_path() {
        assert_eq!(guarded(|| -> Option<u8> { panic!("injected") }), None);
    }

    #[test]
    fn a_plain_span_is_written_in_field_order_with_its_suffix() {
        let raw = span();
        let fs = fields(&raw, M::Span, SPAN_DEPTH).unwrap();
        let plan = plan_span(&raw, fs, SPAN_DEPTH, &Answers::default())
            .ok()
            .unwrap();
        let field = write_span(&plan, b"ot=th:8", b"SUFFIX", &[]);
        let mut want = Vec::new();
        put_len(&mut want, 1, &TID);
        put_len(&mut want, 2, &[1; 8]);
        put_len(&mut want, 3, b"ot=th:8");
        put_len(&mut want, 5, b"GET /");
        put_int32(&mut want, 6, 2);
        put_fixed64(&mut want, 7, 10);
        put_fixed64(&mut want, 8, 20);
        put_len(&mut want, 9, &kv("http.route", "/cart"));
        put_len(&mut want, 15, &[0x18, 0x02]);
        want.extend_from_slice(b"SUFFIX");
        let mut framed = Vec::new();
        put_len(&mut framed, 2, &want);
        assert_eq!(field, framed);
    }

    #[test]
    fn truncated_requests_never_panic() {
        let req = request(&span());
        for cut in 0..=req.len() {
            let Ok(groups) = groups(&req[..cut], &TID) else {
                continue;
            };
            for g in &groups {
                for sp in &g.spans {
                    if let Ok(fs) = fields(sp, M::Span, SPAN_DEPTH) {
                        let _ = writable(&fs, SPAN_DEPTH);
                        let _ = plan_span(sp, fs, SPAN_DEPTH, &Answers::default());
                    }
                }
            }
        }
        assert_eq!(groups(&req, &TID).unwrap()[0].spans.len(), 1);
        assert!(groups(&req, &[8; 16]).unwrap().is_empty());
    }
}
