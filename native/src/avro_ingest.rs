//! Avro ingest with placement in one call (issues 17 and 11 item 6): `ingest_avro` is
//! `decode_avro` plus what `pipeline/job/rekey.py` `place` does with each accepted message, as
//! `rekey::ingest_otlp` is for OTLP protobuf. A `SpanBatch` holds one trace, so its re-keyed copy
//! is the message itself: placing it is a key comparison and murmur2 of the trace ID (the
//! Collector's FNV-1a of its hex under `ingest.partitioning: collector`) — work the Python loop
//! did per message. A message that moves gets no header dicts: it is read again as its copy.
//! `tests/unit/test_native_rekey.py` holds it to the Python reference.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::avro::Batch;
use crate::rekey::{misplaced, placement_args};
use crate::sli::SliWindows;
use crate::EMPTY_VALUE;
use crate::{avro_fragments, guarded, message_bytes, plan_avro, reject, verdict, Checks, Headers};

/// `decode_avro` for a consumed batch that `Job.ingest` re-keys (`ingest.rekey`): per message,
/// with its key (bytes or None) and partition, one of
/// - `(reason, detail)`: its dead-letter verdict, as `decode_avro` gives it;
/// - `[(trace_id, [(service, [header])], span_count)]`: it stays where it arrived;
/// - `([(key, partition, value)], None)`: it moves, as it is (`value` is the message's own bytes
///   object), under its trace's canonical key and — `partition` None when `n_partitions` is 0,
///   unknown — partition;
/// - `(None, fragments)`: misplaced, but larger than `max_record_bytes`: its fragments, to buffer
///   where it arrived.
///
/// `scheme` is `ingest.partitioning` ("tailsift" or "collector").
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn ingest_avro<'py>(
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
) -> PyResult<Bound<'py, PyList>> {
    let scheme = placement_args(scheme, values, keys, &partitions)?;
    let checks = Checks::new(now_ns, limit_ns, max_skew_ns, limits);
    let mut headers = Headers::new(py)?;
    let out = PyList::empty(py);
    let none = py.None().into_bound(py);
    for ((item, key), &partition) in values.iter().zip(keys.iter()).zip(&partitions) {
        let Some(value) = message_bytes(&item) else {
            out.append(verdict(py, &reject("empty_value", EMPTY_VALUE))?)?;
            continue;
        };
        let key = key.cast::<PyBytes>().ok().map(|k| k.as_bytes());
        let decided = guarded(|| {
            let batch = plan_avro(value, &checks.bounds, &checks.limits)?;
            let moves = misplaced(scheme, n_partitions, key, partition, batch.trace_id);
            Ok((batch, moves))
        });
        let (batch, moves) = match decided {
            Ok(decided) => decided,
            Err(r) => {
                out.append(verdict(py, &r)?)?;
                continue;
            }
        };
        if !moves {
            out.append(avro_fragments(py, &mut headers, &batch)?)?;
        } else if value.len() > max_record_bytes {
            let stays = avro_fragments(py, &mut headers, &batch)?;
            out.append(PyTuple::new(py, [&none, stays.as_any()])?)?;
        } else {
            let trace_id = batch.trace_id;
            let to = (n_partitions > 0).then(|| scheme.partition(trace_id, n_partitions));
            let part = (PyBytes::new(py, &scheme.key(trace_id)), to, &item).into_pyobject(py)?;
            let parts = PyList::new(py, [part])?;
            out.append(PyTuple::new(py, [parts.as_any(), &none])?)?;
        }
    }
    Ok(out)
}

/// Count the batch's spans in `windows` under `hold` (span after span: the order `ingest_avro`'s
/// header list has them in, so the windows' sums add up alike) and return its one fragment as
/// `[(trace_id, span_count, has_root, newest_end)]`. `hold` None: counted nowhere (a replayed
/// message whose SLI counts are written already). A root is a span without a parent (`None` in
/// the union), as `add_groups` and the assembler read a header.
fn counted<'py>(
    py: Python<'py>,
    batch: &Batch,
    partition: i64,
    windows: &mut SliWindows,
    hold: Option<&Bound<'py, PyAny>>,
    touched: &mut u64,
) -> PyResult<Bound<'py, PyList>> {
    let mut has_root = false;
    let mut newest = i64::MIN;
    for sp in &batch.spans {
        let root = sp.parent_span_id.is_none();
        has_root |= root;
        newest = newest.max(sp.end);
        if hold.is_some() {
            *touched += windows.add_decoded(
                py,
                partition,
                hold,
                batch.service,
                sp.name,
                sp.kind as usize,
                sp.status_code as usize,
                sp.start as i128,
                sp.end as i128,
                root,
            )?;
        }
    }
    let fragment = (
        PyBytes::new(py, batch.trace_id),
        batch.spans.len(),
        has_root,
        newest,
    );
    PyList::new(py, [fragment.into_pyobject(py)?])
}

/// `ingest_avro` with the SLI counted here and no header dict per span, as
/// `ingest::ingest_otlp_counted` is for OTLP (issue 17: Avro messages hold ~3 spans, so the
/// per-message Python around `ingest_avro` — a `Fragment`, its header dicts, an `add_groups` call,
/// the assembler's root and end scans — cost more than the decode). Per message, with its key,
/// partition and SLI hold (None: count nothing), one of
/// - `(reason, detail)`: its dead-letter verdict;
/// - `[(trace_id, span_count, has_root, newest_end)]`: it stays where it arrived, counted;
/// - `([(key, partition, value)], None)`: it moves as it is (counted when read again);
/// - `(None, [(trace_id, span_count, has_root, newest_end)])`: misplaced but larger than
///   `max_record_bytes`: it stays, counted.
///
/// With `rekey` false every accepted message stays where it arrived. Also returns, per message,
/// how many windows now hold its hold.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn ingest_avro_counted<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    keys: &Bound<'py, PyList>,
    partitions: Vec<i64>,
    holds: &Bound<'py, PyList>,
    windows: &Bound<'py, SliWindows>,
    now_ns: i64,
    limit_ns: i64,
    max_skew_ns: i64,
    limits: (i64, i64),
    rekey: bool,
    scheme: &str,
    n_partitions: u32,
    max_record_bytes: usize,
) -> PyResult<(Bound<'py, PyList>, Vec<u64>)> {
    let scheme = placement_args(scheme, values, keys, &partitions)?;
    if holds.len() != values.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "values and holds differ in length",
        ));
    }
    let checks = Checks::new(now_ns, limit_ns, max_skew_ns, limits);
    let mut windows = windows.borrow_mut();
    let out = PyList::empty(py);
    let mut touched_all = Vec::with_capacity(values.len());
    let none = py.None().into_bound(py);
    for (i, ((item, key), &partition)) in
        values.iter().zip(keys.iter()).zip(&partitions).enumerate()
    {
        let mut touched = 0u64;
        let Some(value) = message_bytes(&item) else {
            out.append(verdict(py, &reject("empty_value", EMPTY_VALUE))?)?;
            touched_all.push(0);
            continue;
        };
        let key = key.cast::<PyBytes>().ok().map(|k| k.as_bytes());
        let decided = guarded(|| {
            let batch = plan_avro(value, &checks.bounds, &checks.limits)?;
            let moves = rekey && misplaced(scheme, n_partitions, key, partition, batch.trace_id);
            Ok((batch, moves))
        });
        let (batch, moves) = match decided {
            Ok(decided) => decided,
            Err(r) => {
                out.append(verdict(py, &r)?)?;
                touched_all.push(0);
                continue;
            }
        };
        let hold = holds.get_item(i)?;
        let hold = (!hold.is_none()).then_some(&hold);
        if !moves {
            out.append(counted(
                py,
                &batch,
                partition,
                &mut windows,
                hold,
                &mut touched,
            )?)?;
        } else if value.len() > max_record_bytes {
            let stays = counted(py, &batch, partition, &mut windows, hold, &mut touched)?;
            out.append(PyTuple::new(py, [&none, stays.as_any()])?)?;
        } else {
            let trace_id = batch.trace_id;
            let to = (n_partitions > 0).then(|| scheme.partition(trace_id, n_partitions));
            let part = (PyBytes::new(py, &scheme.key(trace_id)), to, &item).into_pyobject(py)?;
            let parts = PyList::new(py, [part])?;
            out.append(PyTuple::new(py, [parts.as_any(), &none])?)?;
        }
        touched_all.push(touched);
    }
    Ok((out, touched_all))
}

/// Adds this module's functions to `pipeline._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ingest_avro, m)?)?;
    m.add_function(wrap_pyfunction!(ingest_avro_counted, m)?)?;
    Ok(())
}
