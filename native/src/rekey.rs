//! Re-keying in the native core (issues 17 and 11 item 6): one call per consumed batch of OTLP
//! protobuf values decides, per message, what `Job.ingest` does with it — dead-letter it, take its
//! per-trace fragments where it arrived, or re-publish it on its traces' canonical partitions, one
//! copy per destination partition holding every trace bound there (per trace while the partition
//! count is unknown) — and builds the re-keyed copies in Rust.
//!
//! A copy is built from the request's own bytes: per (resource_spans, scope_spans) occurrence that
//! holds spans of its traces, one `ResourceSpans` with the resource's bytes, one `ScopeSpans` with
//! the scope's bytes and those spans as they came (message order), and both schema URLs.
//! Attributes are never decoded. It is what the Python reference (`pipeline/codecs/otlp.py`
//! `split_request`, `split_traces` for a copy of several traces) writes: the same fields in the
//! same order, so a canonical request (any protobuf serializer's) splits to the same bytes; a
//! non-canonical one (a repeated singular field, an over-long varint) to bytes that parse to the
//! same messages, because protobuf parses a message's occurrences as if merged
//! (`tests/unit/test_native_rekey.py` checks both). A span header dict is built only for a message
//! that stays where it arrived: a re-keyed one is read again as its copies.
//!
//! The canonical placement is `pipeline/kafka/partitioner.py`'s: murmur2 of the 16 trace-ID bytes
//! (the Java client's default, keyed by those bytes), or under `ingest.partitioning: collector`
//! Sarama's FNV-1a of the 32 hex characters (keyed by them).

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::proto::{self, Seen, Val, M};
use crate::{
    guarded, message_bytes, plan_otlp, reject, verdict, Checks, Headers, OtlpPlan, Reject,
};
use crate::{EMPTY_VALUE, OTLP_DECODE_ERROR};

// ------------------------------------------------------------------ placement
/// Where a trace's spans belong (`pipeline.kafka.partitioner.Partitioning`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scheme {
    /// key = the 16 raw bytes, partition = murmur2 (Kafka's Java client default)
    Tailsift,
    /// key = the 32 lowercase hex characters, partition = Sarama's hash (FNV-1a 32, sign folded)
    Collector,
}

impl Scheme {
    pub fn named(name: &str) -> Option<Scheme> {
        match name {
            "tailsift" => Some(Scheme::Tailsift),
            "collector" => Some(Scheme::Collector),
            _ => None,
        }
    }

    /// The key every copy of the trace carries.
    pub fn key(self, trace_id: &[u8]) -> Vec<u8> {
        match self {
            Scheme::Tailsift => trace_id.to_vec(),
            Scheme::Collector => hex(trace_id),
        }
    }

    /// The trace's canonical partition of `partitions` (> 0).
    pub fn partition(self, trace_id: &[u8], partitions: u32) -> u32 {
        match self {
            Scheme::Tailsift => (murmur2(trace_id) & 0x7fff_ffff) % partitions,
            Scheme::Collector => sarama_partition(&hex(trace_id), partitions),
        }
    }
}

pub fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    out
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

pub fn fnv1a_32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// `|int32(fnv1a(key))| mod n`, as Go's `%` truncates and Sarama negates a negative result.
pub fn sarama_partition(key: &[u8], partitions: u32) -> u32 {
    let h = fnv1a_32(key) as i32 as i64;
    (h.abs() % partitions as i64) as u32
}

/// `Ingest._misplaced` for the message's only trace: not keyed by its trace ID (raw or hex; hex
/// only under the Collector's placement), or — with the partition count known — not on the
/// trace's canonical partition.
pub fn misplaced(
    scheme: Scheme,
    partitions: u32,
    key: Option<&[u8]>,
    partition: i64,
    trace_id: &[u8],
) -> bool {
    let hex_key = hex(trace_id);
    let keyed = match key {
        None => false,
        Some(k) => match scheme {
            Scheme::Tailsift => k == trace_id || k == hex_key.as_slice(),
            Scheme::Collector => k == hex_key.as_slice(),
        },
    };
    !keyed || (partitions > 0 && scheme.partition(trace_id, partitions) as i64 != partition)
}

// ------------------------------------------------------------------ the split
/// A resource_spans or scope_spans occurrence's wrapper: its resource (scope) occurrences — kept
/// apart, protobuf merges them when it parses — and its last schema URL (proto3: the last wins).
#[derive(Default, Debug)]
struct Wrapper<'a> {
    inner: Vec<&'a [u8]>,
    schema_url: &'a [u8],
}

/// Per resource_spans its wrapper; per scope_spans (numbered as `proto::parse_request` numbers a
/// span's `group`) its resource_spans and its wrapper.
#[derive(Default, Debug)]
pub struct Envelopes<'a> {
    resources: Vec<Wrapper<'a>>,
    groups: Vec<(usize, Wrapper<'a>)>,
}

/// The envelopes of a request `proto::parse_request` accepted: only the top levels are walked
/// again (spans, resources and scopes are not checked twice).
pub fn envelopes(value: &[u8]) -> proto::R<Envelopes<'_>> {
    let mut env = Envelopes::default();
    proto::walk(value, M::Request, 0, &mut |_, val, depth| {
        let Val::Len(rs) = val else {
            return Ok(Seen::Done);
        };
        let resource = env.resources.len();
        let mut wrapper = Wrapper::default();
        let groups = &mut env.groups;
        proto::walk(rs, M::ResourceSpans, depth, &mut |num, val, depth| {
            match (num, val) {
                (1, Val::Len(res)) => wrapper.inner.push(res),
                (3, Val::Len(url)) => wrapper.schema_url = url,
                (2, Val::Len(ss)) => {
                    let mut scope = Wrapper::default();
                    proto::walk(ss, M::ScopeSpans, depth, &mut |num, val, _| {
                        match (num, val) {
                            (1, Val::Len(s)) => scope.inner.push(s),
                            (3, Val::Len(url)) => scope.schema_url = url,
                            _ => {}
                        }
                        Ok(Seen::Done)
                    })?;
                    groups.push((resource, scope));
                }
                _ => {}
            }
            Ok(Seen::Done)
        })?;
        env.resources.push(wrapper);
        Ok(Seen::Done)
    })?;
    Ok(env)
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// A length-delimited field of number 1..=15 (a one-byte tag): its encoded size.
fn field_len(body: usize) -> usize {
    1 + varint_len(body) + body
}

fn put_field(out: &mut Vec<u8>, num: u8, body_len: usize) {
    out.push(num << 3 | 2);
    let mut v = body_len;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, num: u8, body: &[u8]) {
    put_field(out, num, body.len());
    out.extend_from_slice(body);
}

/// The size of a wrapper's own fields (field 1 per occurrence — an absent one written empty, as
/// the reference's `CopyFrom` marks it present — and the schema URL unless empty).
fn wrapper_len(w: &Wrapper) -> usize {
    let inner = if w.inner.is_empty() {
        2
    } else {
        w.inner.iter().map(|s| field_len(s.len())).sum()
    };
    inner
        + if w.schema_url.is_empty() {
            0
        } else {
            field_len(w.schema_url.len())
        }
}

fn put_inner(out: &mut Vec<u8>, w: &Wrapper) {
    if w.inner.is_empty() {
        put_field(out, 1, 0);
    }
    for s in &w.inner {
        put_bytes(out, 1, s);
    }
}

fn put_schema_url(out: &mut Vec<u8>, w: &Wrapper) {
    if !w.schema_url.is_empty() {
        put_bytes(out, 3, w.schema_url);
    }
}

/// Where one trace's request puts its spans: runs of spans of one scope_spans occurrence (one
/// `ResourceSpans` each) with their (ResourceSpans, ScopeSpans) body sizes, and the whole size —
/// known before a byte is written, so an over-large copy is refused without being built.
pub struct Layout<'i> {
    runs: Vec<&'i [usize]>,
    sizes: Vec<(usize, usize)>,
    pub total: usize,
}

/// The layout of the request of a trace's spans `idx` (in message order); `env` must hold every
/// span's group (`envelopes_of`).
pub fn layout<'i>(plan: &OtlpPlan, env: &Envelopes, idx: &'i [usize]) -> Layout<'i> {
    let spans = &plan.request.spans;
    let mut runs: Vec<&[usize]> = Vec::new();
    let mut start = 0;
    for k in 1..=idx.len() {
        if k == idx.len() || spans[idx[k]].group != spans[idx[start]].group {
            runs.push(&idx[start..k]);
            start = k;
        }
    }
    let sizes: Vec<(usize, usize)> = runs
        .iter()
        .map(|run| {
            let (resource, scope) = &env.groups[spans[run[0]].group];
            let ss = wrapper_len(scope)
                + run
                    .iter()
                    .map(|&i| field_len(spans[i].detail.len()))
                    .sum::<usize>();
            let rs = wrapper_len(&env.resources[*resource]) + field_len(ss);
            (rs, ss)
        })
        .collect();
    let total = sizes.iter().map(|&(rs, _)| field_len(rs)).sum();
    Layout { runs, sizes, total }
}

/// The request a layout describes.
pub fn write(plan: &OtlpPlan, env: &Envelopes, layout: &Layout) -> Vec<u8> {
    let spans = &plan.request.spans;
    let mut out = Vec::with_capacity(layout.total);
    for (run, &(rs, ss)) in layout.runs.iter().zip(&layout.sizes) {
        let (resource, scope) = &env.groups[spans[run[0]].group];
        let resource = &env.resources[*resource];
        put_field(&mut out, 1, rs);
        put_inner(&mut out, resource);
        put_field(&mut out, 2, ss);
        put_inner(&mut out, scope);
        for &i in *run {
            put_bytes(&mut out, 2, spans[i].detail);
        }
        put_schema_url(&mut out, scope);
        put_schema_url(&mut out, resource);
    }
    debug_assert_eq!(out.len(), layout.total);
    out
}

/// The envelopes of a request `plan_otlp` accepted, checked to hold every span's group; a
/// decode_error verdict otherwise (never expected: both walks read the same bytes).
pub fn envelopes_of<'a>(value: &'a [u8], plan: &OtlpPlan) -> Result<Envelopes<'a>, Reject> {
    envelopes(value)
        .ok()
        .filter(|env| {
            plan.request
                .spans
                .iter()
                .all(|s| s.group < env.groups.len())
        })
        .ok_or_else(|| reject("decode_error", OTLP_DECODE_ERROR))
}

/// Every trace's request, in the order the traces first appear.
pub fn split(value: &[u8], plan: &OtlpPlan) -> Result<Vec<Vec<u8>>, Reject> {
    let env = envelopes_of(value, plan)?;
    Ok(plan
        .traces
        .iter()
        .map(|(_, idx)| write(plan, &env, &layout(plan, &env, idx)))
        .collect())
}

/// The span indices of several traces (`plan.traces` positions) in message order: one copy's, for
/// `layout`. A single trace's list is borrowed as it is.
fn merged<'p>(plan: &'p OtlpPlan, traces: &[usize]) -> Cow<'p, [usize]> {
    if let [t] = traces {
        return Cow::Borrowed(plan.traces[*t].1.as_slice());
    }
    let mut idx: Vec<usize> = traces
        .iter()
        .flat_map(|&t| plan.traces[t].1.iter().copied())
        .collect();
    idx.sort_unstable();
    Cow::Owned(idx)
}

// ------------------------------------------------------------------ the batch call
/// A re-keyed copy: its key (None for a copy of several traces), partition (None: unknown, by
/// key) and request.
pub(crate) type RekeyedCopy = (Option<Vec<u8>>, Option<u32>, Vec<u8>);

/// What the job does with one accepted message.
pub(crate) enum Placed {
    /// on its trace's canonical partition, keyed by it (several traces: each one's canonical
    /// partition, whatever the key): buffered where it arrived
    InPlace,
    /// re-published per destination partition (per trace while the partition count is unknown):
    /// (key — None for a copy of several traces —, partition or None, request)
    Rekeyed(Vec<RekeyedCopy>),
    /// re-published as it is (one trace, or several bound for one partition): its key (None for
    /// several traces) and partition
    Whole(Option<Vec<u8>>, Option<u32>),
    /// a copy would exceed the record limit: buffered where it arrived, counted
    TooLarge,
}

pub(crate) struct Placement {
    pub scheme: Scheme,
    pub partitions: u32,
    pub max_record_bytes: usize,
    pub max_copies_bytes: usize,
}

pub(crate) fn place(
    value: &[u8],
    plan: &OtlpPlan,
    key: Option<&[u8]>,
    partition: i64,
    p: &Placement,
) -> Result<Placed, Reject> {
    let where_ =
        |trace_id: &[u8]| (p.partitions > 0).then(|| p.scheme.partition(trace_id, p.partitions));
    if plan.traces.len() == 1 {
        let trace_id = plan.traces[0].0;
        if !misplaced(p.scheme, p.partitions, key, partition, trace_id) {
            return Ok(Placed::InPlace);
        }
        if value.len() > p.max_record_bytes {
            return Ok(Placed::TooLarge);
        }
        return Ok(Placed::Whole(
            Some(p.scheme.key(trace_id)),
            where_(trace_id),
        ));
    }
    // the copies: per destination partition its traces (`plan.traces` positions), in the order
    // the first of them appears; one per trace while the partition count is unknown
    let mut groups: Vec<(Option<u32>, Vec<usize>)> = Vec::new();
    for (t, (trace_id, _)) in plan.traces.iter().enumerate() {
        let home = where_(trace_id);
        match groups
            .iter_mut()
            .find(|(h, _)| home.is_some() && *h == home)
        {
            Some((_, traces)) => traces.push(t),
            None => groups.push((home, vec![t])),
        }
    }
    if p.partitions > 0 && groups.len() == 1 {
        if groups[0].0.map(i64::from) == Some(partition) {
            return Ok(Placed::InPlace); // every trace on the partition it sits on: whatever its key
        }
        if value.len() > p.max_record_bytes {
            return Ok(Placed::TooLarge);
        }
        return Ok(Placed::Whole(None, groups[0].0)); // all bound for one other partition
    }
    let env = envelopes_of(value, plan)?;
    let spans: Vec<Cow<[usize]>> = groups.iter().map(|(_, ts)| merged(plan, ts)).collect();
    let layouts: Vec<Layout> = spans.iter().map(|idx| layout(plan, &env, idx)).collect();
    // `pipeline/job/rekey.py` MAX_COPIES_RECORDS: one large resource over thousands of one-span
    // traces must not split into gigabytes; the sizes are known before a copy is built
    let total: usize = layouts.iter().map(|l| l.total).sum();
    if total > p.max_copies_bytes || layouts.iter().any(|l| l.total > p.max_record_bytes) {
        return Ok(Placed::TooLarge);
    }
    Ok(Placed::Rekeyed(
        groups
            .iter()
            .zip(&layouts)
            .map(|((home, traces), l)| {
                // one trace: its canonical key, so the copy is the one it would get alone
                let key = match traces.as_slice() {
                    [t] => Some(p.scheme.key(plan.traces[*t].0)),
                    _ => None,
                };
                (key, *home, write(plan, &env, l))
            })
            .collect(),
    ))
}

/// The per-trace fragments of a message taken where it arrived (`decode_otlp`'s result for it).
fn fragments<'py>(
    py: Python<'py>,
    headers: &mut Headers<'py>,
    plan: &OtlpPlan,
) -> PyResult<Bound<'py, PyList>> {
    let mut services = vec![None; plan.request.services.len()];
    let fragments = PyList::empty(py);
    for (trace_id, idx) in &plan.traces {
        let groups = PyList::empty(py);
        let mut current: Option<(usize, Bound<'py, PyList>)> = None;
        for &i in idx {
            let (service, h) = headers.otlp(&plan.request, &mut services, i)?;
            let group = plan.request.spans[i].group;
            match &current {
                Some((g, list)) if *g == group => list.append(h)?,
                _ => {
                    let list = PyList::new(py, [h])?;
                    groups.append(PyTuple::new(py, [service.as_any(), list.as_any()])?)?;
                    current = Some((group, list));
                }
            }
        }
        fragments.append((PyBytes::new(py, trace_id), groups, idx.len()).into_pyobject(py)?)?;
    }
    Ok(fragments)
}

/// The placement scheme named by `scheme`, once the per-message lists are checked to line up: what
/// both placing decode calls (`ingest_otlp`, `avro_ingest::ingest_avro`) take from Python.
pub fn placement_args(
    scheme: &str,
    values: &Bound<'_, PyList>,
    keys: &Bound<'_, PyList>,
    partitions: &[i64],
) -> PyResult<Scheme> {
    let Some(scheme) = Scheme::named(scheme) else {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown partitioning {scheme:?}"
        )));
    };
    if keys.len() != values.len() || partitions.len() != values.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "values, keys and partitions differ in length",
        ));
    }
    Ok(scheme)
}

/// `decode_otlp` for a consumed batch that `Job.ingest` re-keys (`ingest.rekey`): per message,
/// with its key (bytes or None) and partition, one of
/// - `(reason, detail)`: its dead-letter verdict, as `decode_otlp` gives it;
/// - a list of `(trace_id, [(service, [header])], span_count)`: it stays where it arrived;
/// - `([(key, partition, value)], None)`: its re-keyed copies (`place`): with `n_partitions`
///   known, one per destination partition in the order its first trace appears, keyed by that
///   trace when it holds one, `key` None when several; unknown (0), one per trace in first-seen
///   order, keyed, `partition` None; `value` the message itself when it holds one trace or all
///   its traces are bound for one partition;
/// - `(None, fragments)`: misplaced, but a copy would be larger than `max_record_bytes`, or all of
///   them larger than `max_copies_bytes`: its fragments, to buffer where it arrived.
///
/// `scheme` is `ingest.partitioning` ("tailsift" or "collector").
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn ingest_otlp<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    keys: &Bound<'py, PyList>,
    partitions: Vec<i64>,
    now_ns: i64,
    limit_ns: i64,
    max_skew_ns: i64,
    limits: (i64, i64),
    scheme: &str,
    n_partitions: u32,
    max_record_bytes: usize,
    max_copies_bytes: usize,
) -> PyResult<Bound<'py, PyList>> {
    let scheme = placement_args(scheme, values, keys, &partitions)?;
    let placement = Placement {
        scheme,
        partitions: n_partitions,
        max_record_bytes,
        max_copies_bytes,
    };
    let checks = Checks::new(now_ns, limit_ns, max_skew_ns, limits);
    let mut headers = Headers::new(py)?;
    let out = PyList::empty(py);
    for ((item, key), &partition) in values.iter().zip(keys.iter()).zip(&partitions) {
        let Some(value) = message_bytes(&item) else {
            out.append(verdict(py, &reject("empty_value", EMPTY_VALUE))?)?;
            continue;
        };
        let key = key.cast::<PyBytes>().ok().map(|k| k.as_bytes());
        let decided = guarded(|| {
            let plan = plan_otlp(value, &checks.bounds, &checks.limits)?;
            let placed = place(value, &plan, key, partition, &placement)?;
            Ok((plan, placed))
        });
        let (plan, placed) = match decided {
            Ok(decided) => decided,
            Err(r) => {
                out.append(verdict(py, &r)?)?;
                continue;
            }
        };
        let none = py.None().into_bound(py);
        match placed {
            Placed::InPlace => out.append(fragments(py, &mut headers, &plan)?)?,
            Placed::TooLarge => {
                let stays = fragments(py, &mut headers, &plan)?;
                out.append(PyTuple::new(py, [&none, stays.as_any()])?)?;
            }
            Placed::Whole(key, partition) => {
                let key = key.map(|k| PyBytes::new(py, &k));
                let part = (key, partition, &item).into_pyobject(py)?;
                let parts = PyList::new(py, [part])?;
                out.append(PyTuple::new(py, [parts.as_any(), &none])?)?;
            }
            Placed::Rekeyed(parts) => {
                let list = PyList::empty(py);
                for (key, partition, part) in parts {
                    let key = key.map(|k| PyBytes::new(py, &k));
                    list.append((key, partition, PyBytes::new(py, &part)))?;
                }
                out.append(PyTuple::new(py, [list.as_any(), &none])?)?;
            }
        }
    }
    Ok(out)
}

/// `Partitioning(scheme).partition(trace_id, partitions)`, for the test that both agree.
#[pyfunction]
fn canonical_partition(scheme: &str, trace_id: &[u8], partitions: u32) -> PyResult<u32> {
    match (Scheme::named(scheme), partitions) {
        (Some(s), 1..) => Ok(s.partition(trace_id, partitions)),
        _ => Err(pyo3::exceptions::PyValueError::new_err(
            "bad scheme or partition count",
        )),
    }
}

/// A request's plan for the differential tests' split calls: its spans grouped by trace in
/// first-seen order, ids and times not checked.
fn plain_plan(value: &[u8]) -> Result<OtlpPlan<'_>, Reject> {
    let request =
        proto::parse_request(value).map_err(|_| reject("decode_error", OTLP_DECODE_ERROR))?;
    let mut traces: Vec<(&[u8], Vec<usize>)> = Vec::new();
    for (i, sp) in request.spans.iter().enumerate() {
        match traces.iter_mut().find(|(t, _)| *t == sp.trace_id) {
            Some((_, idx)) => idx.push(i),
            None => traces.push((sp.trace_id, vec![i])),
        }
    }
    Ok(OtlpPlan { request, traces })
}

/// The split alone, for the differential test: every trace's request (first-seen order, ids and
/// times not checked); None where the bytes do not parse.
#[pyfunction]
fn split_otlp<'py>(py: Python<'py>, value: &[u8]) -> PyResult<Option<Bound<'py, PyList>>> {
    let Ok(parts) = guarded(|| {
        let plan = plain_plan(value)?;
        let parts = split(value, &plan)?;
        Ok(plan
            .traces
            .iter()
            .map(|(t, _)| t.to_vec())
            .zip(parts)
            .collect::<Vec<_>>())
    }) else {
        return Ok(None);
    };
    let out = PyList::empty(py);
    for (trace_id, part) in parts {
        out.append((PyBytes::new(py, &trace_id), PyBytes::new(py, &part)))?;
    }
    Ok(Some(out))
}

/// The split alone for chosen groups of traces, for the differential test: per group (trace IDs
/// of the request) one request of those traces' spans in message order, as `place` writes a
/// copy; None where the bytes do not parse or a group names a trace the request does not hold.
#[pyfunction]
fn split_otlp_groups<'py>(
    py: Python<'py>,
    value: &[u8],
    groups: Vec<Vec<Vec<u8>>>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Ok(parts) = guarded(|| {
        let bad = || reject("decode_error", OTLP_DECODE_ERROR);
        let plan = plain_plan(value)?;
        let env = envelopes_of(value, &plan)?;
        groups
            .iter()
            .map(|group| {
                let positions = group
                    .iter()
                    .map(|id| plan.traces.iter().position(|(t, _)| *t == id.as_slice()))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(bad)?;
                let idx = merged(&plan, &positions);
                Ok(write(&plan, &env, &layout(&plan, &env, &idx)))
            })
            .collect::<Result<Vec<_>, Reject>>()
    }) else {
        return Ok(None);
    };
    let out = PyList::empty(py);
    for part in parts {
        out.append(PyBytes::new(py, &part))?;
    }
    Ok(Some(out))
}

/// Adds this module's functions to `pipeline._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ingest_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_partition, m)?)?;
    m.add_function(wrap_pyfunction!(split_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(split_otlp_groups, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_known_values() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data) as i32, want, "{data:?}");
        }
    }

    #[test]
    fn sarama_folds_the_sign() {
        // fnv1a("a") = 0xe40c292c: negative as int32
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        let h = 0xe40c_292cu32 as i32 as i64;
        assert_eq!(sarama_partition(b"a", 7) as i64, (-h) % 7);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0a, 0xff, 0x10]), b"0aff10".to_vec());
    }
}
