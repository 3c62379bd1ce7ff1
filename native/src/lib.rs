//! tailsift's native ingest core (issue 17, first part): header decoders for OTLP protobuf and
//! Avro `SpanBatch` messages behind a batch boundary — one call per consumed batch, returning per
//! message either a dead-letter verdict `(reason, detail)` or the per-trace fragments
//! `(trace_id, [(service, [span header dict])], span_count)` that `pipeline/codecs/native.py` turns
//! into the job's `Fragment`s. Validation and reject texts are those of the Python decoders
//! (`pipeline/codecs/otlp.py` `decode_traces`, `operators/span_times.py`), which stay the
//! reference: `tests/unit/test_native_differential.py` compares both on valid, hostile and random
//! bytes.
//!
//! Safety: no `unsafe` here (only inside PyO3). Each message is decoded under `catch_unwind`, so a
//! panic on hostile bytes dead-letters that message as `decode_error`; it never aborts the process
//! or loses the rest of the batch.

#![forbid(unsafe_code)]

pub mod avro;
pub mod avro_ingest;
pub mod avro_kept;
pub mod facts;
pub mod ingest;
pub mod kept;
pub mod proto;
pub mod rekey;
pub mod sli;
pub mod times;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use times::Bounds;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// bytes the format's reader refuses (the text is for logs; no payload bytes in it)
    Malformed(&'static str),
}

/// A dead-letter verdict for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: &'static str,
    pub detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// The per-span bounds of `pipeline/codecs/interface.py` `SpanLimits` (`ingest.max_span_bytes`,
/// `ingest.max_attributes_per_span`), with its reject texts. Like the Python codecs, a message
/// looks at its spans only when it is long enough to break a bound: that gate decides which hostile
/// bytes are refused, so it is the reference's to the byte.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_span_bytes: i128,
    pub max_attributes: i128,
}

impl Limits {
    /// `SpanLimits()`: no bound a message can reach.
    pub const NONE: Limits = Limits {
        max_span_bytes: 1 << 62,
        max_attributes: 1 << 62,
    };
    /// the fewest bytes one attribute takes encoded (`SpanLimits.MIN_ATTRIBUTE_BYTES`)
    const MIN_ATTRIBUTE_BYTES: i128 = 2;

    pub fn may_exceed_bytes(&self, len: usize) -> bool {
        len as i128 > self.max_span_bytes
    }

    pub fn may_exceed_attributes(&self, len: usize) -> bool {
        len as i128 > Self::MIN_ATTRIBUTE_BYTES * self.max_attributes
    }

    fn too_large(&self, place: &str, size: impl std::fmt::Display) -> Reject {
        reject(
            "span_too_large",
            format!(
                "{place} is {size} bytes encoded, over ingest.max_span_bytes = {}",
                self.max_span_bytes
            ),
        )
    }

    fn too_many_attributes(&self, place: &str, count: impl std::fmt::Display) -> Reject {
        reject(
            "too_many_attributes",
            format!(
                "{place} has {count} attributes, over ingest.max_attributes_per_span = {}",
                self.max_attributes
            ),
        )
    }
}

const KINDS: [&str; 6] = [
    "UNSPECIFIED",
    "INTERNAL",
    "SERVER",
    "CLIENT",
    "PRODUCER",
    "CONSUMER",
];
const STATUSES: [&str; 3] = ["UNSET", "OK", "ERROR"];
const EMPTY_VALUE: &str = "the message value is empty or null (tombstone)";
/// The job's decode_error text for every protobuf parse failure: upb's messages ("Error parsing
/// message with type '...ExportTraceServiceRequest': Wire format was corrupt", "...: String field
/// had bad UTF-8", "...: Exceeded upb_DecodeOptions_MaxDepth") are all longer than the 120
/// characters `pipeline.job._safe` lets through, so the Python path withholds them all alike.
pub const OTLP_DECODE_ERROR: &str =
    "not an OTLP ExportTraceServiceRequest (otlp_proto): DecodeError: (message withheld: may contain payload bytes)";

// ------------------------------------------------------------------ OTLP: validate, then group
/// A validated OTLP request: traces in first-seen order, each a list of span indexes.
pub struct OtlpPlan<'a> {
    pub request: proto::Request<'a>,
    pub traces: Vec<(&'a [u8], Vec<usize>)>,
}

/// `decode_traces` with time bounds and span limits, and the job's `empty_batch` check.
pub fn plan_otlp<'a>(
    value: &'a [u8],
    bounds: &Bounds,
    limits: &Limits,
) -> Result<OtlpPlan<'a>, Reject> {
    let request =
        proto::parse_request(value).map_err(|_| reject("decode_error", OTLP_DECODE_ERROR))?;
    let check_bytes = limits.may_exceed_bytes(value.len());
    let check_attributes = limits.may_exceed_attributes(value.len());
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut traces: Vec<(&[u8], Vec<usize>)> = Vec::new();
    for (i, sp) in request.spans.iter().enumerate() {
        let t = match index.get(sp.trace_id) {
            Some(&t) => t,
            None => {
                if sp.trace_id.len() != 16 || sp.trace_id.iter().all(|&b| b == 0) {
                    return Err(reject(
                        "invalid_trace_id",
                        "a trace ID is not 16 non-zero bytes",
                    ));
                }
                index.insert(sp.trace_id, traces.len());
                traces.push((sp.trace_id, Vec::new()));
                traces.len() - 1
            }
        };
        if sp.span_id.len() != 8 {
            return Err(reject(
                "invalid_span_id",
                format!("a span ID is {} bytes, not 8", sp.span_id.len()),
            ));
        }
        if sp.span_id.iter().all(|&b| b == 0) {
            // W3C: an all-zero span ID is invalid
            return Err(reject("invalid_span_id", "a span ID is all zeros"));
        }
        if check_attributes && sp.attributes as i128 > limits.max_attributes {
            return Err(limits.too_many_attributes("a span", sp.attributes));
        }
        if check_bytes {
            // the size protobuf writes the span in (`Span.ByteSize()`), not its wire length
            let size = proto::encoded_size(&[sp.detail], proto::M::Span);
            if size as i128 > limits.max_span_bytes {
                return Err(limits.too_large("a span", size));
            }
        }
        if !sp.parent_span_id.is_empty() && sp.parent_span_id.len() != 8 {
            return Err(reject(
                "invalid_span_id",
                format!(
                    "a parent span ID is {} bytes, not 8",
                    sp.parent_span_id.len()
                ),
            ));
        }
        let (start, end) = (sp.start as i128, sp.end as i128);
        if !bounds.ok(start, end) {
            return Err(reject(
                "invalid_timestamp",
                bounds.explain("a span", start, end),
            ));
        }
        traces[t].1.push(i);
    }
    if traces.is_empty() {
        return Err(reject("empty_batch", "the request has no spans"));
    }
    Ok(OtlpPlan { request, traces })
}

// ------------------------------------------------------------------ Avro
/// The job's Avro checks in its order: decode, empty, zero trace ID, per span its ID and times,
/// then the span limits.
pub fn plan_avro<'a>(
    value: &'a [u8],
    bounds: &Bounds,
    limits: &Limits,
) -> Result<avro::Batch<'a>, Reject> {
    let batch = avro::parse_batch(value).map_err(|Error::Malformed(why)| {
        reject(
            "decode_error",
            format!("not a span_batch.v1 record: native reader: {why}"),
        )
    })?;
    if batch.spans.is_empty() {
        return Err(reject("empty_batch", "the batch has no spans"));
    }
    if batch.trace_id.iter().all(|&b| b == 0) {
        return Err(reject("invalid_trace_id", "the trace ID is all zeros"));
    }
    // one pass, as the Python codec makes it: each span's ID (W3C: all zeros is invalid), then its
    // times. (`SpanTimeBounds.violation` names the span by `spans.index(span)`, the first equal one:
    // an equal span before it would have failed first, so that is this one.)
    for (i, sp) in batch.spans.iter().enumerate() {
        if sp.span_id.iter().all(|&b| b == 0) {
            return Err(reject(
                "invalid_span_id",
                format!("span {i}: the span ID is all zeros"),
            ));
        }
        let (start, end) = (sp.start as i128, sp.end as i128);
        if !bounds.ok(start, end) {
            return Err(reject(
                "invalid_timestamp",
                bounds.explain(&format!("span {i}:"), start, end),
            ));
        }
    }
    let check_bytes = limits.may_exceed_bytes(value.len());
    let check_attributes = limits.may_exceed_attributes(value.len());
    if check_bytes || check_attributes {
        for (i, sp) in batch.spans.iter().enumerate() {
            if check_bytes {
                // AvroCodec: the detail's bytes and the name's and trace state's characters
                let size =
                    sp.detail.len() + sp.name.chars().count() + sp.trace_state.chars().count();
                if size as i128 > limits.max_span_bytes {
                    return Err(limits.too_large(&format!("span {i}"), size));
                }
            }
            if check_attributes && limits.may_exceed_attributes(sp.detail.len()) {
                let count = avro::attribute_count(sp.detail, limits.max_attributes);
                if count > limits.max_attributes {
                    return Err(limits.too_many_attributes(&format!("span {i}"), count));
                }
            }
        }
    }
    Ok(batch)
}

/// Run `f` so that a panic becomes this message's `decode_error` verdict.
fn guarded<T>(f: impl FnOnce() -> Result<T, Reject>) -> Result<T, Reject> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(reject(
            "decode_error",
            "the native decoder failed on this message (a bug, not the input's fault)",
        ))
    })
}

// ------------------------------------------------------------------ Python objects
struct Keys<'py> {
    service: Bound<'py, PyString>,
    span_id: Bound<'py, PyString>,
    parent_span_id: Bound<'py, PyString>,
    name: Bound<'py, PyString>,
    kind: Bound<'py, PyString>,
    start: Bound<'py, PyString>,
    end: Bound<'py, PyString>,
    status_code: Bound<'py, PyString>,
    trace_state: Bound<'py, PyString>,
    detail: Bound<'py, PyString>,
    kinds: Vec<Bound<'py, PyString>>,
    statuses: Vec<Bound<'py, PyString>>,
    /// every header key: a copy is a dict already sized for them (no resize while filling it)
    template: Bound<'py, PyDict>,
}

impl<'py> Keys<'py> {
    fn new(py: Python<'py>) -> PyResult<Self> {
        let k = Keys {
            service: intern!(py, "service").clone(),
            span_id: intern!(py, "span_id").clone(),
            parent_span_id: intern!(py, "parent_span_id").clone(),
            name: intern!(py, "name").clone(),
            kind: intern!(py, "kind").clone(),
            start: intern!(py, "start_time_unix_nano").clone(),
            end: intern!(py, "end_time_unix_nano").clone(),
            status_code: intern!(py, "status_code").clone(),
            trace_state: intern!(py, "trace_state").clone(),
            detail: intern!(py, "detail").clone(),
            kinds: KINDS.iter().map(|k| PyString::intern(py, k)).collect(),
            statuses: STATUSES.iter().map(|k| PyString::intern(py, k)).collect(),
            template: PyDict::new(py),
        };
        for key in [
            &k.service,
            &k.span_id,
            &k.parent_span_id,
            &k.name,
            &k.kind,
            &k.start,
            &k.end,
            &k.status_code,
            &k.trace_state,
            &k.detail,
        ] {
            k.template.set_item(key, py.None())?;
        }
        Ok(k)
    }
}

/// Cached per distinct text: a batch repeats few services and span names.
fn cached_str<'py>(
    py: Python<'py>,
    cache: &mut HashMap<String, Bound<'py, PyString>>,
    s: &str,
) -> Bound<'py, PyString> {
    if let Some(v) = cache.get(s) {
        return v.clone();
    }
    let v = PyString::new(py, s);
    if cache.len() < 4096 {
        cache.insert(s.to_string(), v.clone());
    }
    v
}

fn verdict<'py>(py: Python<'py>, r: &Reject) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyTuple::new(py, [r.reason, r.detail.as_str()])?.into_any())
}

fn message_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> Option<&'a [u8]> {
    item.cast::<PyBytes>()
        .ok()
        .map(|b| b.as_bytes())
        .filter(|b| !b.is_empty())
}

/// Builds the span header dicts of one call (interned keys, a cache of repeated texts).
struct Headers<'py> {
    py: Python<'py>,
    k: Keys<'py>,
    strs: HashMap<String, Bound<'py, PyString>>,
}

impl<'py> Headers<'py> {
    fn new(py: Python<'py>) -> PyResult<Self> {
        Ok(Headers {
            py,
            k: Keys::new(py)?,
            strs: HashMap::new(),
        })
    }

    fn text(&mut self, s: &str) -> Bound<'py, PyString> {
        cached_str(self.py, &mut self.strs, s)
    }

    #[allow(clippy::too_many_arguments)]
    fn header<T: IntoPyObject<'py> + Copy>(
        &mut self,
        service: &Bound<'py, PyString>,
        span_id: &[u8],
        parent: Option<&[u8]>,
        name: &str,
        kind: usize,
        start: T,
        end: T,
        status: usize,
        trace_state: &str,
        detail: &[u8],
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = self.py;
        let (name, trace_state) = (self.text(name), self.text(trace_state));
        let k = &self.k;
        let d = k.template.copy()?;
        d.set_item(&k.service, service)?;
        d.set_item(&k.span_id, PyBytes::new(py, span_id))?;
        match parent {
            Some(p) => d.set_item(&k.parent_span_id, PyBytes::new(py, p))?,
            None => d.set_item(&k.parent_span_id, py.None())?,
        }
        d.set_item(&k.name, name)?;
        d.set_item(&k.kind, &k.kinds[kind])?;
        d.set_item(&k.start, start)?;
        d.set_item(&k.end, end)?;
        d.set_item(&k.status_code, &k.statuses[status])?;
        d.set_item(&k.trace_state, trace_state)?;
        d.set_item(&k.detail, PyBytes::new(py, detail))?;
        Ok(d)
    }

    /// Span `i` of an OTLP request; `services` holds a Python string per resource that has
    /// spans, made when its first span is.
    fn otlp(
        &mut self,
        request: &proto::Request,
        services: &mut [Option<Bound<'py, PyString>>],
        i: usize,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>)> {
        let sp = &request.spans[i];
        let service = match &services[sp.resource] {
            Some(s) => s.clone(),
            None => {
                let s = self.text(request.services[sp.resource]);
                services[sp.resource] = Some(s.clone());
                s
            }
        };
        // decode_traces: an enum value outside the names reads as the first name
        let kind = usize::try_from(sp.kind).ok().filter(|&k| k < KINDS.len());
        let status = usize::try_from(sp.status_code)
            .ok()
            .filter(|&s| s < STATUSES.len());
        let parent = (!sp.parent_span_id.is_empty()).then_some(sp.parent_span_id);
        let h = self.header(
            &service,
            sp.span_id,
            parent,
            sp.name,
            kind.unwrap_or(0),
            sp.start,
            sp.end,
            status.unwrap_or(0),
            sp.trace_state,
            sp.detail,
        )?;
        Ok((service, h))
    }

    fn avro(
        &mut self,
        service: &Bound<'py, PyString>,
        sp: &avro::AvroSpan,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.header(
            service,
            sp.span_id,
            sp.parent_span_id,
            sp.name,
            sp.kind as usize,
            sp.start,
            sp.end,
            sp.status_code as usize,
            sp.trace_state,
            sp.detail,
        )
    }
}

/// The checks of one ingest call: span times at the worker's `now_ns`, and span limits.
struct Checks {
    bounds: Bounds,
    limits: Limits,
}

impl Checks {
    fn new(now_ns: i64, limit_ns: i64, max_skew_ns: i64, limits: (i64, i64)) -> Self {
        Checks {
            bounds: Bounds {
                limit_ns: limit_ns as i128,
                max_skew_ns: max_skew_ns as i128,
                now_ns: now_ns as i128,
            },
            limits: Limits {
                max_span_bytes: limits.0 as i128,
                max_attributes: limits.1 as i128,
            },
        }
    }
}

/// The loop of both ingest calls: per value, a `(reason, detail)` verdict — an empty value, or
/// `decode`'s refusal — or what `decode` built from it.
fn each_message<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    mut decode: impl FnMut(&[u8]) -> PyResult<Result<Bound<'py, PyAny>, Reject>>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for item in values.iter() {
        let result = match message_bytes(&item) {
            None => Err(reject("empty_value", EMPTY_VALUE)),
            Some(value) => decode(value)?,
        };
        match result {
            Ok(decoded) => out.append(decoded)?,
            Err(r) => out.append(verdict(py, &r)?)?,
        }
    }
    Ok(out)
}

/// One call per consumed batch of OTLP protobuf values: per message a `(reason, detail)` verdict or
/// a list of `(trace_id, [(service, [header])], span_count)`; a header's `detail` is the encoded
/// `Span` (decode it with protobuf only when a policy reads attributes). `limits` is
/// `(max_span_bytes, max_attributes)`.
#[pyfunction]
fn decode_otlp<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    now_ns: i64,
    limit_ns: i64,
    max_skew_ns: i64,
    limits: (i64, i64),
) -> PyResult<Bound<'py, PyList>> {
    let checks = Checks::new(now_ns, limit_ns, max_skew_ns, limits);
    let mut headers = Headers::new(py)?;
    each_message(py, values, |value| {
        let plan = match guarded(|| plan_otlp(value, &checks.bounds, &checks.limits)) {
            Ok(plan) => plan,
            Err(r) => return Ok(Err(r)),
        };
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
            let fragment = (PyBytes::new(py, trace_id), groups, idx.len()).into_pyobject(py)?;
            fragments.append(fragment)?;
        }
        Ok(Ok(fragments.into_any()))
    })
}

/// One call per consumed batch of Avro `SpanBatch` values: per message a `(reason, detail)` verdict
/// or a one-fragment list (a SpanBatch holds one trace and one service); `detail` is the span's
/// encoded `SpanDetail`, as fastavro gives it.
#[pyfunction]
fn decode_avro<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    now_ns: i64,
    limit_ns: i64,
    max_skew_ns: i64,
    limits: (i64, i64),
) -> PyResult<Bound<'py, PyList>> {
    let checks = Checks::new(now_ns, limit_ns, max_skew_ns, limits);
    let mut headers = Headers::new(py)?;
    each_message(py, values, |value| {
        let batch = match guarded(|| plan_avro(value, &checks.bounds, &checks.limits)) {
            Ok(batch) => batch,
            Err(r) => return Ok(Err(r)),
        };
        Ok(Ok(avro_fragments(py, &mut headers, &batch)?.into_any()))
    })
}

/// A SpanBatch's one fragment, as a one-item list: `[(trace_id, [(service, [header])], n)]`.
fn avro_fragments<'py>(
    py: Python<'py>,
    headers: &mut Headers<'py>,
    batch: &avro::Batch,
) -> PyResult<Bound<'py, PyList>> {
    let service = headers.text(batch.service);
    let spans = PyList::empty(py);
    for sp in &batch.spans {
        spans.append(headers.avro(&service, sp)?)?;
    }
    let groups = PyList::new(py, [PyTuple::new(py, [service.as_any(), spans.as_any()])?])?;
    let fragment =
        (PyBytes::new(py, batch.trace_id), groups, batch.spans.len()).into_pyobject(py)?;
    PyList::new(py, [fragment])
}

/// The decision's re-decode (`Codec.decode_trace` for a whole `collect`): per `(value, trace_id)`
/// of messages ingest accepted before, the header dicts of that trace's spans in message order —
/// as `decode_otlp` made them, not validated again — or None where the bytes do not parse (they
/// did at ingest: never expected; the caller then asks the Python codec).
#[pyfunction]
fn trace_headers_otlp<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    trace_ids: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let mut headers = Headers::new(py)?;
    let out = PyList::empty(py);
    for (item, trace_id) in values.iter().zip(trace_ids.iter()) {
        let (Some(value), Ok(trace_id)) = (message_bytes(&item), trace_id.cast::<PyBytes>()) else {
            out.append(py.None())?;
            continue;
        };
        let Ok(request) = guarded(|| {
            proto::parse_request(value).map_err(|_| reject("decode_error", OTLP_DECODE_ERROR))
        }) else {
            out.append(py.None())?;
            continue;
        };
        let trace_id = trace_id.as_bytes();
        let mut services = vec![None; request.services.len()];
        let spans = PyList::empty(py);
        for (i, sp) in request.spans.iter().enumerate() {
            if sp.trace_id == trace_id {
                spans.append(headers.otlp(&request, &mut services, i)?.1)?;
            }
        }
        out.append(spans)?;
    }
    Ok(out)
}

/// As `trace_headers_otlp` for Avro `SpanBatch` values (one trace per message: every span).
#[pyfunction]
fn trace_headers_avro<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let mut headers = Headers::new(py)?;
    let out = PyList::empty(py);
    for item in values.iter() {
        let parsed = message_bytes(&item).map(|value| {
            guarded(|| {
                avro::parse_batch(value)
                    .map_err(|Error::Malformed(why)| reject("decode_error", why))
            })
        });
        let Some(Ok(batch)) = parsed else {
            out.append(py.None())?;
            continue;
        };
        let service = headers.text(batch.service);
        let spans = PyList::empty(py);
        for sp in &batch.spans {
            spans.append(headers.avro(&service, sp)?)?;
        }
        out.append(spans)?;
    }
    Ok(out)
}

/// For the test that a panic dead-letters its message and spares the rest of the batch: the
/// guard every decoder call runs under, around a decoder that panics on values starting with
/// b"panic".
#[pyfunction]
fn _guard_selftest<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for item in values.iter() {
        let value = message_bytes(&item).unwrap_or_default();
        match guarded(|| {
            if value.starts_with(b"panic") {
                panic!("injected panic");
            }
            Ok(value.len())
        }) {
            Ok(n) => out.append(n)?,
            Err(r) => out.append(verdict(py, &r)?)?,
        }
    }
    Ok(out)
}

/// Importable as `pipeline._native`: inside a package, so an editable install finds it (setuptools'
/// editable finder maps packages, not a top-level extension module built in place).
#[pymodule]
#[pyo3(name = "_native")]
fn tailsift_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(decode_avro, m)?)?;
    m.add_function(wrap_pyfunction!(trace_headers_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(trace_headers_avro, m)?)?;
    m.add_function(wrap_pyfunction!(_guard_selftest, m)?)?;
    rekey::register(m)?;
    avro_ingest::register(m)?;
    facts::register(m)?;
    ingest::register(m)?;
    kept::register(m)?;
    avro_kept::register(m)?;
    m.add_class::<sli::SliWindows>()?;
    m.add_class::<sli::Window>()?;
    Ok(())
}
