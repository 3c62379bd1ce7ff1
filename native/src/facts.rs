//! The decision's facts (issue 17): one call per chunk of due traces reads their buffered messages
//! again and returns, per trace, a `TraceFacts` — the header facts the common policies read (span
//! count, any error, earliest start, latest end, the tracestate the view picks) computed in the
//! same pass — and, for the whole call, the service graph's requests (parent → child across
//! services) summed per (client, server) pair in the order they were first found. No span header
//! dict is built unless something asks for the spans (`TraceFacts.spans()`: an attribute rule,
//! rare-path, …); then the messages are read again and the dicts are those `trace_headers_otlp` /
//! `trace_headers_avro` build, key for key.
//!
//! The Python reference: `operators/trace.py` `TraceView` (the facts from the header dicts) and
//! `operators/service_graph.py` `ServiceGraph.add_trace` (the pairing);
//! `tests/unit/test_native_facts.py` holds both to the same answers on random and hostile traces.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::{avro, guarded, message_bytes, proto, reject, Error, Headers, OTLP_DECODE_ERROR};

/// `STATUSES` index of ERROR
const ERROR: usize = 2;

/// What the facts and the graph read of one span, borrowed from its message.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    service: &'a str,
    span_id: &'a [u8],
    /// None for a root span (an OTLP span with an empty parent ID, as its header dict says)
    parent: Option<&'a [u8]>,
    start: i128,
    end: i128,
    error: bool,
    trace_state: &'a str,
}

fn parse_otlp(value: &[u8]) -> Option<proto::Request<'_>> {
    guarded(|| proto::parse_request(value).map_err(|_| reject("decode_error", OTLP_DECODE_ERROR)))
        .ok()
}

fn parse_avro(value: &[u8]) -> Option<avro::Batch<'_>> {
    guarded(|| {
        avro::parse_batch(value).map_err(|Error::Malformed(why)| reject("decode_error", why))
    })
    .ok()
}

/// The spans of `trace_id` in one OTLP message, in message order (as `trace_headers_otlp`);
/// false when the bytes do not parse.
fn otlp_heads<'a>(value: &'a [u8], trace_id: &[u8], out: &mut Vec<Head<'a>>) -> bool {
    let Some(request) = parse_otlp(value) else {
        return false;
    };
    for sp in &request.spans {
        if sp.trace_id != trace_id {
            continue;
        }
        // decode_traces: a status outside the names reads as UNSET
        let status = usize::try_from(sp.status_code).unwrap_or(0);
        out.push(Head {
            service: request.services[sp.resource],
            span_id: sp.span_id,
            parent: (!sp.parent_span_id.is_empty()).then_some(sp.parent_span_id),
            start: sp.start as i128,
            end: sp.end as i128,
            error: status == ERROR,
            trace_state: sp.trace_state,
        });
    }
    true
}

/// The re-read's fast path for OTLP: the same spans as `otlp_heads` without the validating walk
/// (ingest checked these bytes; attributes, events, links and scopes are skipped by length, not
/// walked). It reads only the plain shapes — every field a known one with its expected wire type —
/// and gives up (None, having added nothing) at anything else: unknown fields, groups, a field
/// with another wire type, bad UTF-8. Then the validating reader reads the message, whose
/// protobuf rules (unknown fields kept, wrong wire types as unknown, merges) decide.
fn otlp_heads_fast<'a>(value: &'a [u8], trace_id: &[u8], out: &mut Vec<Head<'a>>) -> bool {
    let first = out.len();
    let read = (|| {
        let mut w = proto::Wire::new(value);
        while !w.at_end() {
            match w.tag().ok()? {
                (1, 2) => fast_resource_spans(w.delimited().ok()?, trace_id, out)?,
                _ => return None,
            }
        }
        Some(())
    })();
    if read.is_none() {
        out.truncate(first);
    }
    read.is_some()
}

/// Skip a field of wire type `wt` (not a group).
fn skip(w: &mut proto::Wire, wt: u8) -> Option<()> {
    match wt {
        0 => w.varint().ok().map(drop),
        1 => w.fixed64().ok().map(drop),
        2 => w.delimited().ok().map(drop),
        5 => w.fixed32().ok().map(drop),
        _ => None,
    }
}

/// A `ResourceSpans`: its spans of `trace_id` to `out`, with its service — the first `service.name`
/// attribute over every occurrence of `resource` (which may follow the spans), else "".
fn fast_resource_spans<'a>(buf: &'a [u8], trace_id: &[u8], out: &mut Vec<Head<'a>>) -> Option<()> {
    let first = out.len();
    let mut service: Option<&'a str> = None;
    let mut w = proto::Wire::new(buf);
    while !w.at_end() {
        match w.tag().ok()? {
            (1, 2) => {
                let resource = w.delimited().ok()?;
                let mut r = proto::Wire::new(resource);
                while !r.at_end() {
                    match r.tag().ok()? {
                        (1, 2) => {
                            let (key, value) = fast_key_value(r.delimited().ok()?)?;
                            if service.is_none() && key == b"service.name" {
                                service = Some(std::str::from_utf8(value).ok()?);
                            }
                        }
                        (2, 0) => skip(&mut r, 0)?,
                        (3, 2) => skip(&mut r, 2)?,
                        _ => return None,
                    }
                }
            }
            (2, 2) => {
                let scope_spans = w.delimited().ok()?;
                let mut s = proto::Wire::new(scope_spans);
                while !s.at_end() {
                    match s.tag().ok()? {
                        (2, 2) => fast_span(s.delimited().ok()?, trace_id, out)?,
                        (1 | 3, 2) => skip(&mut s, 2)?,
                        _ => return None,
                    }
                }
            }
            (3, 2) => skip(&mut w, 2)?,
            _ => return None,
        }
    }
    let service = service.unwrap_or("");
    for h in &mut out[first..] {
        h.service = service;
    }
    Some(())
}

/// A `KeyValue`'s (key, string value): the last key; the value's string when the last member of
/// its oneof (over every occurrence of `value`) is `string_value`, else empty.
fn fast_key_value(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut key, mut string): (&[u8], &[u8]) = (b"", b"");
    let mut w = proto::Wire::new(buf);
    while !w.at_end() {
        match w.tag().ok()? {
            (1, 2) => key = w.delimited().ok()?,
            (2, 2) => {
                let mut v = proto::Wire::new(w.delimited().ok()?);
                while !v.at_end() {
                    string = match v.tag().ok()? {
                        (1, 2) => v.delimited().ok()?,
                        (n @ (2 | 3), 0) | (n @ 4, 1) | (n @ (5..=7), 2) => {
                            skip(
                                &mut v,
                                if n == 4 {
                                    1
                                } else if n <= 3 {
                                    0
                                } else {
                                    2
                                },
                            )?;
                            b""
                        }
                        _ => return None,
                    };
                }
            }
            _ => return None,
        }
    }
    Some((key, string))
}

/// One `Span`: to `out` when it belongs to `trace_id` (its service is set by the caller). Repeated
/// scalars: the last wins; `status` occurrences merge (its code: the last).
fn fast_span<'a>(buf: &'a [u8], trace_id: &[u8], out: &mut Vec<Head<'a>>) -> Option<()> {
    let (mut tid, mut span_id, mut parent, mut state): (&[u8], &[u8], &[u8], &[u8]) =
        (b"", b"", b"", b"");
    let (mut start, mut end, mut status) = (0u64, 0u64, 0i32);
    let mut w = proto::Wire::new(buf);
    while !w.at_end() {
        match w.tag().ok()? {
            (1, 2) => tid = w.delimited().ok()?,
            (2, 2) => span_id = w.delimited().ok()?,
            (3, 2) => state = w.delimited().ok()?,
            (4, 2) => parent = w.delimited().ok()?,
            (7, 1) => start = w.fixed64().ok()?,
            (8, 1) => end = w.fixed64().ok()?,
            (15, 2) => {
                let mut st = proto::Wire::new(w.delimited().ok()?);
                while !st.at_end() {
                    match st.tag().ok()? {
                        (3, 0) => status = st.varint().ok()? as u32 as i32,
                        (2, 2) => skip(&mut st, 2)?,
                        _ => return None,
                    }
                }
            }
            (5 | 9 | 11 | 13, 2) => skip(&mut w, 2)?,
            (6 | 10 | 12 | 14, 0) => skip(&mut w, 0)?,
            (16, 5) => skip(&mut w, 5)?,
            _ => return None,
        }
    }
    if tid == trace_id {
        out.push(Head {
            service: "",
            span_id,
            parent: (!parent.is_empty()).then_some(parent),
            start: start as i128,
            end: end as i128,
            error: status == ERROR as i32,
            trace_state: std::str::from_utf8(state).ok()?,
        });
    }
    Some(())
}

/// Every span of one Avro `SpanBatch` (one trace per message, as `trace_headers_avro`).
fn avro_heads<'a>(value: &'a [u8], out: &mut Vec<Head<'a>>) -> bool {
    let Some(batch) = parse_avro(value) else {
        return false;
    };
    for sp in &batch.spans {
        out.push(Head {
            service: batch.service,
            span_id: sp.span_id,
            parent: sp.parent_span_id,
            start: sp.start as i128,
            end: sp.end as i128,
            error: sp.status_code as usize == ERROR,
            trace_state: sp.trace_state,
        });
    }
    true
}

/// The tracestate `TraceView.trace_state` picks: the root's (the first span without a parent)
/// when it has one, else the first non-empty one.
fn trace_state<'a>(heads: &[Head<'a>]) -> &'a str {
    if let Some(root) = heads.iter().find(|h| h.parent.is_none()) {
        if !root.trace_state.is_empty() {
            return root.trace_state;
        }
    }
    heads
        .iter()
        .map(|h| h.trace_state)
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

/// The service graph's requests of a call, summed per raw (client, server) pair in the order
/// each pair was first found; latencies in whole nanoseconds (exact, so the sum does not depend
/// on how requests are grouped).
#[derive(Default)]
struct Requests<'a> {
    index: HashMap<(&'a str, &'a str), usize>,
    pairs: Vec<(&'a str, &'a str, u64, u64, i128)>,
}

impl<'a> Requests<'a> {
    /// `ServiceGraph.add_trace`: a span whose parent (the last span of the trace with that span
    /// ID, as a dict keyed by ID keeps it) belongs to another service is one request of
    /// parent's service → its service; failed when either is ERROR; latency the child's
    /// end − start, 0 if negative.
    fn add_trace(&mut self, heads: &[Head<'a>]) {
        let mut by_id: HashMap<&[u8], usize> = HashMap::with_capacity(heads.len());
        for (i, h) in heads.iter().enumerate() {
            by_id.insert(h.span_id, i);
        }
        for child in heads {
            let Some(parent) = child.parent.and_then(|p| by_id.get(p)).map(|&i| &heads[i]) else {
                continue;
            };
            if parent.service == child.service {
                continue;
            }
            let key = (parent.service, child.service);
            let at = *self.index.entry(key).or_insert_with(|| {
                self.pairs.push((key.0, key.1, 0, 0, 0));
                self.pairs.len() - 1
            });
            let pair = &mut self.pairs[at];
            pair.2 += 1;
            pair.3 += u64::from(child.error || parent.error);
            pair.4 += (child.end - child.start).max(0);
        }
    }
}

/// The header facts of one due trace (what `TraceView` computes from the span dicts), and what
/// it takes to build those dicts should anything ask for them.
#[pyclass(frozen, module = "pipeline._native")]
pub struct TraceFacts {
    #[pyo3(get)]
    span_count: usize,
    #[pyo3(get)]
    has_error: bool,
    start_ns: i128,
    end_ns: i128,
    #[pyo3(get)]
    trace_state: Py<PyString>,
    avro: bool,
    trace_id: Py<PyBytes>,
    values: Vec<Py<PyBytes>>,
}

/// An exact int as a Python int: through `i64` when it fits — under the stable ABI PyO3 converts
/// an `i128` through Python calls (~1 µs a time, see `sli.rs` `time_ns`); a time or a per-trace
/// latency sum always fits.
fn int(py: Python<'_>, v: i128) -> PyResult<Bound<'_, PyAny>> {
    Ok(match i64::try_from(v) {
        Ok(v) => v.into_pyobject(py)?.into_any(),
        Err(_) => v.into_pyobject(py)?.into_any(),
    })
}

#[pymethods]
impl TraceFacts {
    #[getter]
    fn start_ns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        int(py, self.start_ns)
    }

    #[getter]
    fn end_ns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        int(py, self.end_ns)
    }

    /// The span header dicts, in message order — exactly those `trace_headers_otlp` /
    /// `trace_headers_avro` build — read again from the messages: only for a trace whose
    /// policies look past the facts.
    fn spans<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut headers = Headers::new(py)?;
        let out = PyList::empty(py);
        let unreadable = || PyValueError::new_err("a message read before no longer parses");
        for value in &self.values {
            let value = value.bind(py).as_bytes();
            if self.avro {
                let batch = parse_avro(value).ok_or_else(unreadable)?;
                let service = headers.text(batch.service);
                for sp in &batch.spans {
                    out.append(headers.avro(&service, sp)?)?;
                }
            } else {
                let request = parse_otlp(value).ok_or_else(unreadable)?;
                let trace_id = self.trace_id.bind(py).as_bytes();
                let mut services = vec![None; request.services.len()];
                for (i, sp) in request.spans.iter().enumerate() {
                    if sp.trace_id == trace_id {
                        out.append(headers.otlp(&request, &mut services, i)?.1)?;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The decision's re-read of a chunk of due traces. `values` are their buffered messages, trace
/// after trace (`counts[i]` messages of trace `trace_ids[i]`); returns per trace its
/// `TraceFacts`, or None where a message does not parse again or the trace has no span (never
/// expected: the caller then reads it with the Python codec), and the service graph's requests of
/// the traces that have facts: `(client, server, requests, failed, latency_ns)` per raw service
/// pair, in first-found order.
#[pyfunction]
pub fn trace_facts<'py>(
    py: Python<'py>,
    avro: bool,
    values: &Bound<'py, PyList>,
    trace_ids: &Bound<'py, PyList>,
    counts: Vec<usize>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    if counts.len() != trace_ids.len() || counts.iter().sum::<usize>() != values.len() {
        return Err(PyValueError::new_err(
            "counts must give every trace ID its messages",
        ));
    }
    let items: Vec<Bound<'py, PyAny>> = values.iter().collect();
    let ids: Vec<Bound<'py, PyAny>> = trace_ids.iter().collect();
    let empty = PyString::intern(py, "");
    let facts = PyList::empty(py);
    let mut requests = Requests::default();
    let mut heads: Vec<Head> = Vec::new();
    let mut at = 0;
    for (trace_id, &n) in ids.iter().zip(&counts) {
        let messages = &items[at..at + n];
        at += n;
        heads.clear();
        let trace_id = trace_id.cast::<PyBytes>().ok();
        let read = trace_id.is_some()
            && messages.iter().all(|item| match message_bytes(item) {
                None => false,
                Some(value) if avro => avro_heads(value, &mut heads),
                Some(value) => {
                    let trace_id = trace_id.unwrap().as_bytes();
                    otlp_heads_fast(value, trace_id, &mut heads)
                        || otlp_heads(value, trace_id, &mut heads)
                }
            });
        if !read || heads.is_empty() {
            facts.append(py.None())?;
            continue;
        }
        requests.add_trace(&heads);
        let state = trace_state(&heads);
        let trace_state = if state.is_empty() {
            empty.clone()
        } else {
            PyString::new(py, state)
        };
        let f = TraceFacts {
            span_count: heads.len(),
            has_error: heads.iter().any(|h| h.error),
            start_ns: heads.iter().map(|h| h.start).min().unwrap_or(0),
            end_ns: heads.iter().map(|h| h.end).max().unwrap_or(0),
            trace_state: trace_state.unbind(),
            avro,
            trace_id: trace_id.unwrap().clone().unbind(),
            values: messages
                .iter()
                .map(|item| item.cast::<PyBytes>().map(|b| b.clone().unbind()))
                .collect::<Result<_, _>>()?,
        };
        facts.append(Bound::new(py, f)?)?;
    }
    let pairs = PyList::empty(py);
    for (client, server, n, failed, latency_ns) in requests.pairs {
        pairs.append(PyTuple::new(
            py,
            [
                PyString::new(py, client).into_any(),
                PyString::new(py, server).into_any(),
                n.into_pyobject(py)?.into_any(),
                failed.into_pyobject(py)?.into_any(),
                int(py, latency_ns)?,
            ],
        )?)?;
    }
    Ok((facts, pairs))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(trace_facts, m)?)?;
    m.add_class::<TraceFacts>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ld(n: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8];
        let mut len = body.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(body);
        out
    }

    /// A request of two resources, spans of two traces, a status, a parent, attributes.
    fn sample() -> Vec<u8> {
        let mut span = ld(1, &[1; 16]);
        span.extend(ld(2, &[2; 8]));
        span.extend(ld(4, &[3; 8]));
        span.extend(ld(3, b"k=v"));
        span.push(7 << 3 | 1);
        span.extend(5u64.to_le_bytes());
        span.push(8 << 3 | 1);
        span.extend(9u64.to_le_bytes());
        span.extend(ld(15, &[3 << 3, 2]));
        span.extend(ld(9, &ld(1, b"k")));
        let mut other = ld(1, &[4; 16]);
        other.extend(ld(2, &[3; 8]));
        let kv = [ld(1, b"service.name"), ld(2, &ld(1, b"svc"))].concat();
        let mut rs = ld(1, &ld(1, &kv));
        rs.extend(ld(2, &[ld(2, &span), ld(2, &other)].concat()));
        let mut req = ld(1, &rs);
        req.extend(ld(1, &ld(2, &ld(2, &span))));
        req
    }

    /// Both readers' spans (as text: they borrow from `value`) when both read the message.
    fn both(value: &[u8], trace_id: &[u8]) -> Option<(String, String)> {
        let (mut fast, mut full) = (Vec::new(), Vec::new());
        let f = otlp_heads_fast(value, trace_id, &mut fast).then(|| format!("{fast:?}"));
        let g = otlp_heads(value, trace_id, &mut full).then(|| format!("{full:?}"));
        f.zip(g)
    }

    #[test]
    fn the_fast_path_reads_a_plain_request_as_the_validating_reader() {
        let req = sample();
        let mut fast = Vec::new();
        assert!(otlp_heads_fast(&req, &[1; 16], &mut fast));
        let mut full = Vec::new();
        assert!(otlp_heads(&req, &[1; 16], &mut full));
        assert_eq!(fast, full);
        assert_eq!(fast.len(), 2);
        assert!(fast[0].error && fast[0].service == "svc" && fast[1].service.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever the bytes: no panic, and where both readers read the message, the same spans.
        #[test]
        fn the_fast_path_agrees_or_gives_up(
            at in 0usize..400, x in 1u8..=255, cut in 0usize..400,
            junk in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut value = sample();
            let i = at % value.len();
            value[i] ^= x;
            value.truncate(cut.max(1));
            let j = at % (value.len() + 1);
            value.splice(j..j, junk);
            if let Some((fast, full)) = both(&value, &[1; 16]) {
                prop_assert_eq!(fast, full);
            }
        }
    }
}
