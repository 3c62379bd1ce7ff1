//! The counted ingest of OTLP protobuf batches (issues 11 and 17): `rekey::ingest_otlp` without a
//! Python object per span. Per consumed batch one call decodes, checks and places every message
//! (as `ingest_otlp` does) and counts the spans of the messages that stay where they arrived in
//! the job's native SLI windows right here, from the decoded fields — so no span header dict is
//! built at ingest at all. What the job's routing needs of a fragment comes back as four values:
//! its trace ID, span count, whether it holds a root span, and its newest span end (event time).
//!
//! The decision reads a buffered trace's headers again from its raw bytes (`facts.rs`), so a
//! header dict built at ingest was only ever read by the SLI windows and the assembler's root and
//! event-time checks: about a third of the job core's ingest CPU went into building and then
//! collecting them (`pipeline/codecs/native.py` `ingest_counted`, README "Design").

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::rekey::{place, placement_args, Placed, Placement};
use crate::sli::SliWindows;
use crate::{guarded, message_bytes, plan_otlp, reject, verdict, Checks, OtlpPlan, EMPTY_VALUE};
use crate::{KINDS, STATUSES};

/// Count the plan's spans in `windows` under `hold` (trace after trace, span after span: the
/// order `ingest_otlp`'s fragments list them in, so the windows' sums add up alike), and return
/// per trace `(trace_id, span_count, has_root, newest_end)`. `hold` None: counted nowhere (a
/// replayed message whose SLI counts are written already).
fn counted<'py>(
    py: Python<'py>,
    plan: &OtlpPlan,
    partition: i64,
    windows: &mut SliWindows,
    hold: Option<&Bound<'py, PyAny>>,
    touched: &mut u64,
) -> PyResult<Bound<'py, PyList>> {
    let request = &plan.request;
    let out = PyList::empty(py);
    for (trace_id, idx) in &plan.traces {
        let mut has_root = false;
        let mut newest = 0u64;
        for &i in idx {
            let sp = &request.spans[i];
            let root = sp.parent_span_id.is_empty();
            has_root |= root;
            newest = newest.max(sp.end);
            if hold.is_some() {
                // decode_traces: an enum value outside the names reads as the first name
                let kind = usize::try_from(sp.kind)
                    .ok()
                    .filter(|&k| k < KINDS.len())
                    .unwrap_or(0);
                let status = usize::try_from(sp.status_code)
                    .ok()
                    .filter(|&s| s < STATUSES.len())
                    .unwrap_or(0);
                *touched += windows.add_decoded(
                    py,
                    partition,
                    hold,
                    request.services[sp.resource],
                    sp.name,
                    kind,
                    status,
                    sp.start as i128,
                    sp.end as i128,
                    root,
                )?;
            }
        }
        out.append((PyBytes::new(py, trace_id), idx.len(), has_root, newest))?;
    }
    Ok(out)
}

/// `rekey::ingest_otlp` with the SLI counted here: per message, with its key (bytes or None),
/// partition and SLI hold (`holds`: the object the windows hold until emitted, None to count
/// nothing), one of
/// - `(reason, detail)`: its dead-letter verdict;
/// - a list of `(trace_id, span_count, has_root, newest_end)`: it stays where it arrived, its
///   spans counted in `windows`;
/// - `([(key, partition, value)], None)`: its re-keyed copies, as `rekey::ingest_otlp` gives them
///   (one per destination partition, key None when it holds several traces; counted when read
///   again);
/// - `(None, [(trace_id, span_count, has_root, newest_end)])`: misplaced but too large to re-key:
///   it stays, counted.
///
/// With `rekey` false every accepted message stays where it arrived. Also returns, per message,
/// how many windows now hold its hold (the obligations to add to it).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn ingest_otlp_counted<'py>(
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
    max_copies_bytes: usize,
) -> PyResult<(Bound<'py, PyList>, Vec<u64>)> {
    let scheme = placement_args(scheme, values, keys, &partitions)?;
    if holds.len() != values.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "values and holds differ in length",
        ));
    }
    let placement = Placement {
        scheme,
        partitions: n_partitions,
        max_record_bytes,
        max_copies_bytes,
    };
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
            let plan = plan_otlp(value, &checks.bounds, &checks.limits)?;
            let placed = if rekey {
                place(value, &plan, key, partition, &placement)?
            } else {
                Placed::InPlace
            };
            Ok((plan, placed))
        });
        let (plan, placed) = match decided {
            Ok(decided) => decided,
            Err(r) => {
                out.append(verdict(py, &r)?)?;
                touched_all.push(0);
                continue;
            }
        };
        let hold = holds.get_item(i)?;
        let hold = (!hold.is_none()).then_some(&hold);
        match placed {
            Placed::InPlace => out.append(counted(
                py,
                &plan,
                partition,
                &mut windows,
                hold,
                &mut touched,
            )?)?,
            Placed::TooLarge => {
                let stays = counted(py, &plan, partition, &mut windows, hold, &mut touched)?;
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
        touched_all.push(touched);
    }
    Ok((out, touched_all))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ingest_otlp_counted, m)?)?;
    Ok(())
}
