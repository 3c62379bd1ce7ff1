//! Avro ingest with placement in one call (issues 17 and 11 item 6): `ingest_avro` is
//! `decode_avro` plus what `pipeline/job/rekey.py` `place` does with each accepted message, as
//! `rekey::ingest_otlp` is for OTLP protobuf. A `SpanBatch` holds one trace, so its re-keyed copy
//! is the message itself: placing it is a key comparison and murmur2 of the trace ID (the
//! Collector's FNV-1a of its hex under `ingest.partitioning: collector`) — work the Python loop
//! did per message. A message that moves gets no header dicts: it is read again as its copy.
//! `tests/unit/test_native_rekey.py` holds it to the Python reference.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::rekey::{misplaced, placement_args};
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

/// Adds this module's functions to `pipeline._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ingest_avro, m)?)?;
    Ok(())
}
