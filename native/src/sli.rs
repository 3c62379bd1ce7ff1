//! The SLI windows of `operators/sli.py` (`SliWindows`) in the native core (issue 17 item 2):
//! per span, the window, the bounded operation label, the exact counts and the latency sketch are
//! updated here, so no Python runs per span for SLIs. Python calls in once per fragment
//! (`add_groups`, as before) and once per commit (`due`), whose windows build their `SliWindow`
//! record (`record`) or its Avro bytes (`encode`) here too.
//!
//! The Python `SliWindows` stays the reference (`job.core: python`);
//! `tests/unit/test_native_sli.py` feeds both the same batches and asserts identical records, bin
//! for bin. That is why the sketch is not `sketches-ddsketch`: the record carries the Python
//! `ddsketch` `DenseStore`'s own layout (`bin_offset` and the zero-padded `bin_counts`, grown in
//! chunks of 128 and re-centred in the order keys first appear), which that crate's stores do not
//! reproduce. `Store` below is that `DenseStore`, line for line; the key mapping is the
//! `LogarithmicMapping` with its constants taken from the Python `ddsketch` object itself (so
//! both compute `ceil(ln(x) / ln 2 * multiplier)` with the same libm and the same constants).

use std::collections::{HashMap, HashSet};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// raw names remembered per service (`operators/sli.py` `_MEMO_LIMIT`): reset when full
const MEMO_LIMIT: usize = 4096;
const CHUNK_SIZE: i64 = 128;
const OVERFLOW_SERVICE: &str = "__overflow__";
const OVERFLOW_OPERATION: &str = "__other__";
const NS_PER_MS: f64 = 1_000_000.0;
const RECORD_QUANTILES: [f64; 4] = [0.50, 0.90, 0.95, 0.99];

/// `ddsketch.store.DenseStore` (ddsketch < 4): every bin between the lowest and highest key,
/// grown in chunks and re-centred exactly as the Python store does, so the record's `bin_offset`
/// and `bin_counts` are the same. `min_key`/`max_key` start at the extremes of `i64` (the Python
/// store's ±infinity sentinels compare the same way against any real key).
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    pub bins: Vec<f64>,
    pub offset: i64,
    pub min_key: i64,
    pub max_key: i64,
    pub count: f64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            bins: Vec::new(),
            offset: 0,
            min_key: i64::MAX,
            max_key: i64::MIN,
            count: 0.0,
        }
    }
}

impl Store {
    pub fn add(&mut self, key: i64, weight: f64) {
        if key < self.min_key || key > self.max_key {
            self.extend_range(key, key);
        }
        let idx = self.index(key);
        self.bins[idx] += weight;
        self.count += weight;
    }

    /// A key's bin; the centring keeps every key in [min_key, max_key] inside the bins.
    fn index(&self, key: i64) -> usize {
        let idx = key - self.offset;
        assert!(
            idx >= 0 && (idx as usize) < self.bins.len(),
            "DenseStore key out of its bins"
        );
        idx as usize
    }

    fn new_length(&self, new_min: i64, new_max: i64) -> usize {
        let desired = new_max - new_min + 1;
        (CHUNK_SIZE * ((desired + CHUNK_SIZE - 1) / CHUNK_SIZE)) as usize
    }

    fn extend_range(&mut self, key: i64, second_key: i64) {
        let new_min = key.min(second_key).min(self.min_key);
        let new_max = key.max(second_key).max(self.max_key);
        if self.bins.is_empty() {
            self.bins = vec![0.0; self.new_length(new_min, new_max)];
            self.offset = new_min;
            self.adjust(new_min, new_max);
        } else if new_min >= self.min_key && new_max < self.offset + self.bins.len() as i64 {
            self.min_key = new_min;
            self.max_key = new_max;
        } else {
            let new_length = self.new_length(new_min, new_max);
            if new_length > self.bins.len() {
                self.bins.resize(new_length, 0.0);
            }
            self.adjust(new_min, new_max);
        }
    }

    fn adjust(&mut self, new_min: i64, new_max: i64) {
        let middle = new_min + (new_max - new_min + 1).div_euclid(2);
        let shift = self.offset + (self.bins.len() as i64).div_euclid(2) - middle;
        self.shift_bins(shift);
        self.min_key = new_min;
        self.max_key = new_max;
    }

    /// `bins[:-shift]` behind `shift` zeros, or `bins[-shift:]` before them (Python slices: a shift
    /// past the length empties the kept part).
    fn shift_bins(&mut self, shift: i64) {
        let len = self.bins.len();
        if shift > 0 {
            let s = shift as usize;
            let mut bins = vec![0.0; s];
            bins.extend_from_slice(&self.bins[..len.saturating_sub(s)]);
            self.bins = bins;
        } else {
            let s = shift.unsigned_abs() as usize;
            let mut bins = self.bins[s.min(len)..].to_vec();
            bins.resize(bins.len() + s, 0.0);
            self.bins = bins;
        }
        self.offset -= shift;
    }

    pub fn merge(&mut self, other: &Store) {
        if other.count == 0.0 {
            return;
        }
        if self.count == 0.0 {
            *self = other.clone();
            return;
        }
        if other.min_key < self.min_key || other.max_key > self.max_key {
            self.extend_range(other.min_key, other.max_key);
        }
        for key in other.min_key..=other.max_key {
            let into = self.index(key);
            self.bins[into] += other.bins[(key - other.offset) as usize];
        }
        self.count += other.count;
    }
}

/// The positive store, zero count and count of a `DDSketch` (latencies are ≥ 0: no negatives).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    pub store: Store,
    pub zero_count: f64,
    pub count: f64,
}

impl Sketch {
    /// `DDSketch.merge` for sketches of one accuracy (all of one `SliWindows` are).
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0.0 {
            return;
        }
        if self.count == 0.0 {
            *self = other.clone();
            return;
        }
        self.store.merge(&other.store);
        self.zero_count += other.zero_count;
        self.count += other.count;
    }
}

/// `LogarithmicMapping` (offset 0) with the Python object's constants.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    pub relative_accuracy: f64,
    pub multiplier: f64,
    pub min_possible: f64,
    /// `2.0 / (1 + gamma)`
    pub value_factor: f64,
}

impl Mapping {
    /// `ceil(log(x) / log(2.0) * multiplier)`: `math.log(x, 2) * multiplier`, as the Python hot
    /// path computes it
    pub fn key(&self, value: f64) -> i64 {
        (value.ln() / std::f64::consts::LN_2 * self.multiplier).ceil() as i64
    }

    /// `math.pow(2.0, key / multiplier) * (2.0 / (1 + gamma))`. The base goes through
    /// `black_box`: with a constant 2.0 LLVM turns `pow` into `exp2`, whose last bit differs from
    /// libm's `pow` (Python's) for some keys.
    pub fn value(&self, key: i64) -> f64 {
        std::hint::black_box(2.0f64).powf(key as f64 / self.multiplier) * self.value_factor
    }
}

/// `WindowAggregate.quantiles` for `qs` ascending: one pass over the bins, the same running sum
/// compared with the same ranks, clamped to the exact extremes.
pub fn quantiles(
    sketch: &Sketch,
    mapping: &Mapping,
    span_count: u64,
    lo: f64,
    hi: f64,
    qs: &[f64],
) -> Vec<f64> {
    if span_count == 0 {
        return vec![0.0; qs.len()];
    }
    let below = sketch.zero_count;
    let mut values = Vec::with_capacity(qs.len());
    let mut pending = Vec::with_capacity(qs.len());
    for &q in qs {
        let rank = q * (sketch.count - 1.0);
        if rank < below {
            values.push(0.0);
        } else {
            pending.push(rank - sketch.zero_count);
        }
    }
    let store = &sketch.store;
    let mut keys = Vec::with_capacity(pending.len());
    if !pending.is_empty() {
        let mut running = 0.0;
        let mut j = 0;
        for (i, &count) in store.bins.iter().enumerate() {
            running += count;
            while j < pending.len() && running > pending[j] {
                keys.push(i as i64 + store.offset);
                j += 1;
            }
            if j == pending.len() {
                break;
            }
        }
        while keys.len() < pending.len() {
            keys.push(store.max_key);
        }
    }
    values.extend(keys.into_iter().map(|k| mapping.value(k)));
    values
        .into_iter()
        .map(|v| {
            let v = if lo > v { lo } else { v };
            if hi < v {
                hi
            } else {
                v
            }
        })
        .collect()
}

/// One open window of one partition (or, after `due`, the merge of its partials).
pub struct Agg {
    pub span_count: u64,
    pub error_count: u64,
    pub root_count: u64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub sum_ms: f64,
    pub sketch: Sketch,
    pub holds: Vec<Py<PyAny>>,
    pub partitions: Vec<i64>,
    pub partials: u64,
}

impl Agg {
    fn new(partition: i64) -> Self {
        Agg {
            span_count: 0,
            error_count: 0,
            root_count: 0,
            min_ms: f64::INFINITY,
            max_ms: 0.0,
            sum_ms: 0.0,
            sketch: Sketch::default(),
            holds: Vec::new(),
            partitions: vec![partition],
            partials: 1,
        }
    }

    /// `WindowAggregate.merge` (same accuracy)
    fn merge(&mut self, other: Agg) {
        self.sketch.merge(&other.sketch);
        if other.span_count > 0 {
            self.min_ms = self.min_ms.min(other.min_ms);
            self.max_ms = self.max_ms.max(other.max_ms);
        }
        self.span_count += other.span_count;
        self.error_count += other.error_count;
        self.root_count += other.root_count;
        self.sum_ms += other.sum_ms;
        self.partials += other.partials;
        for p in other.partitions {
            if !self.partitions.contains(&p) {
                self.partitions.push(p);
            }
        }
        self.holds.extend(other.holds);
    }
}

/// (partition, service label, window start, operation label, kind, status): labels are ids
/// into `Labels`
type Key = (i64, u32, i64, u32, u32, u32);

/// Every label text once, as the Python string handed out for it.
#[derive(Default)]
struct Labels {
    ids: HashMap<String, u32>,
    texts: Vec<Py<PyString>>,
    plain: Vec<String>,
}

impl Labels {
    fn get(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Interned for good: only texts the bounds admit come here (hostile cardinality must not
    /// grow this table: a name past `max_operations` is looked up, never added).
    fn id(&mut self, py: Python<'_>, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.texts.len() as u32;
        self.ids.insert(text.to_owned(), id);
        self.texts.push(PyString::new(py, text).unbind());
        self.plain.push(text.to_owned());
        id
    }
}

/// Per service label: the memo of raw span names and the admitted operation labels.
#[derive(Default)]
struct Operations {
    memo: HashMap<String, u32>,
    admitted: HashSet<u32>,
}

/// `operators.sli.SliWindows` with the state in Rust (see the module doc).
#[pyclass(module = "pipeline._native", name = "SliWindows")]
pub struct SliWindows {
    #[pyo3(get)]
    window_ns: i64,
    #[pyo3(get)]
    grace_ns: i64,
    #[pyo3(get)]
    max_services: usize,
    #[pyo3(get)]
    max_operations: usize,
    mapping: Mapping,
    sanitize: Py<PyAny>,
    protect_service: Option<Py<PyAny>>,
    labels: Labels,
    service_memo: HashMap<String, u32>,
    services: HashSet<u32>,
    operations: HashMap<u32, Operations>,
    open: HashMap<Key, Agg>,
    /// kind and status texts by object: the decoders hand out one interned string per value, so
    /// a pointer compare replaces hashing the text (held, so no other object can take the address)
    recent: Vec<(Py<PyString>, u32)>,
    error: u32,
    /// label ids of the decoders' kind and status texts (`crate::KINDS`, `crate::STATUSES`), by
    /// index: `add_decoded` gets the index, not a string (made on first use)
    kind_labels: [Option<u32>; 6],
    status_labels: [Option<u32>; 3],
}

impl SliWindows {
    fn admit_service(&mut self, py: Python<'_>, label: &str) -> u32 {
        if let Some(id) = self
            .labels
            .get(label)
            .filter(|id| self.services.contains(id))
        {
            return id;
        }
        if self.services.len() < self.max_services {
            let id = self.labels.id(py, label);
            self.services.insert(id);
            return id;
        }
        self.labels.id(py, OVERFLOW_SERVICE)
    }

    fn service_id(&mut self, py: Python<'_>, raw: &Bound<'_, PyString>) -> PyResult<u32> {
        self.service_id_of(py, raw.to_str()?)
    }

    /// `service_id` of a raw service name as text (the Python string is made only for the
    /// protector, on a memo miss).
    fn service_id_of(&mut self, py: Python<'_>, text: &str) -> PyResult<u32> {
        if let Some(&id) = self.service_memo.get(text) {
            return Ok(id);
        }
        if self.service_memo.len() >= MEMO_LIMIT {
            self.service_memo.clear();
        }
        let id = match &self.protect_service {
            Some(protect) => {
                let label = protect.bind(py).call1((PyString::new(py, text),))?;
                let label = label.cast::<PyString>()?.to_str()?.to_owned();
                self.admit_service(py, &label)
            }
            None => self.admit_service(py, text),
        };
        self.service_memo.insert(text.to_owned(), id);
        Ok(id)
    }

    fn operation_id(
        &mut self,
        py: Python<'_>,
        service: u32,
        name: &Bound<'_, PyString>,
    ) -> PyResult<u32> {
        self.operation_id_of(py, service, name.to_str()?)
    }

    /// `operation_id` of a raw span name as text (a Python string only for the sanitizer, on a
    /// memo miss).
    fn operation_id_of(&mut self, py: Python<'_>, service: u32, text: &str) -> PyResult<u32> {
        if let Some(&id) = self
            .operations
            .get(&service)
            .and_then(|ops| ops.memo.get(text))
        {
            return Ok(id);
        }
        let label = self.sanitize.bind(py).call1((PyString::new(py, text),))?;
        let label = label.cast::<PyString>()?.to_str()?.to_owned();
        let ops = self.operations.entry(service).or_default();
        let id = match self
            .labels
            .get(&label)
            .filter(|id| ops.admitted.contains(id))
        {
            Some(id) => id,
            None if ops.admitted.len() < self.max_operations => {
                let id = self.labels.id(py, &label);
                ops.admitted.insert(id);
                id
            }
            None => self.labels.id(py, OVERFLOW_OPERATION),
        };
        if ops.memo.len() >= MEMO_LIMIT {
            ops.memo.clear();
        }
        ops.memo.insert(text.to_owned(), id);
        Ok(id)
    }
}

impl SliWindows {
    /// Count one span in its window (`operators.sli.SliWindows.add_groups`' loop body); 1 when
    /// this made the window hold `hold` (it releases the hold once when emitted), else 0.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn count(
        &mut self,
        partition: i64,
        hold: Option<&Bound<'_, PyAny>>,
        service: u32,
        op: u32,
        kind: u32,
        status: u32,
        start: i128,
        end: i128,
        root: bool,
    ) -> PyResult<u64> {
        let window_ns = self.window_ns as i128;
        let mapping = self.mapping;
        let window_start = end - end.rem_euclid(window_ns);
        let window_start = i64::try_from(window_start)
            .map_err(|_| PyValueError::new_err("span end time out of range"))?;
        let key = (partition, service, window_start, op, kind, status);
        let agg = self.open.entry(key).or_insert_with(|| Agg::new(partition));
        let mut touched = 0;
        if let Some(h) = hold {
            if agg.holds.last().map(|last| last.as_ptr()) != Some(h.as_ptr()) {
                agg.holds.push(h.clone().unbind());
                touched = 1;
            }
        }
        let mut latency_ms = (end - start) as f64 / NS_PER_MS;
        if latency_ms <= 0.0 {
            latency_ms = 0.0; // clock skew between hosts: count the span, not a negative latency
        }
        if latency_ms > mapping.min_possible {
            agg.sketch.store.add(mapping.key(latency_ms), 1.0);
        } else {
            agg.sketch.zero_count += 1.0;
        }
        agg.sketch.count += 1.0;
        agg.span_count += 1;
        if latency_ms < agg.min_ms {
            agg.min_ms = latency_ms;
        }
        if latency_ms > agg.max_ms {
            agg.max_ms = latency_ms;
        }
        agg.sum_ms += latency_ms;
        if status == self.error {
            agg.error_count += 1;
        }
        if root {
            agg.root_count += 1;
        }
        Ok(touched)
    }

    /// Count one span as the native decoders read it — no header dict: its raw service and span
    /// name, the index of its kind in `crate::KINDS` and of its status in `crate::STATUSES` —
    /// exactly as `add_groups` counts the header dict the decoders would build for it
    /// (`tests/unit/test_native_ingest.py` holds both to the Python windows). Returns as `count`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_decoded(
        &mut self,
        py: Python<'_>,
        partition: i64,
        hold: Option<&Bound<'_, PyAny>>,
        service: &str,
        name: &str,
        kind: usize,
        status: usize,
        start: i128,
        end: i128,
        root: bool,
    ) -> PyResult<u64> {
        let service = self.service_id_of(py, service)?;
        let op = self.operation_id_of(py, service, name)?;
        let kind = match self.kind_labels[kind] {
            Some(id) => id,
            None => {
                let id = self.labels.id(py, crate::KINDS[kind]);
                self.kind_labels[kind] = Some(id);
                id
            }
        };
        let status = match self.status_labels[status] {
            Some(id) => id,
            None => {
                let id = self.labels.id(py, crate::STATUSES[status]);
                self.status_labels[status] = Some(id);
                id
            }
        };
        self.count(partition, hold, service, op, kind, status, start, end, root)
    }

    /// The label id of a kind or status text (few distinct values: see `recent`).
    fn small_label(&mut self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<u32> {
        let ptr = text.as_ptr();
        if let Some((_, id)) = self.recent.iter().find(|(s, _)| s.as_ptr() == ptr) {
            return Ok(*id);
        }
        let text = text.cast::<PyString>()?;
        let id = self.labels.id(py, text.to_str()?);
        if self.recent.len() < 16 {
            self.recent.push((text.clone().unbind(), id));
        }
        Ok(id)
    }
}

/// A span time as i128 (the Python subtracts exact ints). Through `i64` first: under the stable
/// ABI PyO3 converts an `i128` through Python calls, ~1 µs a time; every checked time fits i64.
fn time_ns(value: &Bound<'_, PyAny>) -> PyResult<i128> {
    match value.extract::<i64>() {
        Ok(v) => Ok(v as i128),
        Err(_) => value.extract::<i128>(),
    }
}

/// A span field the decoders always set; a dict without it is a caller's bug, not input.
fn field<'py>(
    span: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    span.get_item(key)?
        .ok_or_else(|| PyValueError::new_err(format!("span header without {key}")))
}

#[pymethods]
impl SliWindows {
    /// `multiplier`, `min_possible` and `value_factor` are the Python `LogarithmicMapping`'s
    /// (`_multiplier`, `min_possible`, `2.0 / (1 + gamma)`): `pipeline/job/sli.py` reads them off
    /// a `ddsketch.DDSketch` of `relative_accuracy`.
    #[new]
    #[pyo3(signature = (window_ns, grace_ns, relative_accuracy, max_services, max_operations, sanitize, service_label, multiplier, min_possible, value_factor))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        window_ns: i64,
        grace_ns: i64,
        relative_accuracy: f64,
        max_services: usize,
        max_operations: usize,
        sanitize: Py<PyAny>,
        service_label: Option<Py<PyAny>>,
        multiplier: f64,
        min_possible: f64,
        value_factor: f64,
    ) -> PyResult<Self> {
        if window_ns <= 0 {
            return Err(PyValueError::new_err("window_ns must be positive"));
        }
        let mut windows = SliWindows {
            window_ns,
            grace_ns,
            max_services,
            max_operations,
            mapping: Mapping {
                relative_accuracy,
                multiplier,
                min_possible,
                value_factor,
            },
            sanitize,
            protect_service: service_label,
            labels: Labels::default(),
            service_memo: HashMap::new(),
            services: HashSet::new(),
            operations: HashMap::new(),
            open: HashMap::new(),
            recent: Vec::new(),
            error: 0,
            kind_labels: [None; 6],
            status_labels: [None; 3],
        };
        windows.error = windows.labels.id(py, "ERROR");
        Ok(windows)
    }

    #[getter]
    fn relative_accuracy(&self) -> f64 {
        self.mapping.relative_accuracy
    }

    /// How many label texts the windows hold (bounded by the label bounds; for tests).
    #[getter]
    fn labels_held(&self) -> usize {
        self.labels.texts.len()
    }

    fn __len__(&self) -> usize {
        self.open.len()
    }

    /// The bounded, protected dimension of a service name (memoized).
    fn service_label(
        &mut self,
        py: Python<'_>,
        service: &Bound<'_, PyString>,
    ) -> PyResult<Py<PyString>> {
        let id = self.service_id(py, service)?;
        Ok(self.labels.texts[id as usize].clone_ref(py))
    }

    /// The bounded operation dimension of a span name under a service label (memoized).
    fn operation_label(
        &mut self,
        py: Python<'_>,
        service: &Bound<'_, PyString>,
        name: &Bound<'_, PyString>,
    ) -> PyResult<Py<PyString>> {
        let service = self.labels.id(py, service.to_str()?);
        let id = self.operation_id(py, service, name)?;
        Ok(self.labels.texts[id as usize].clone_ref(py))
    }

    /// Count one message's spans of one service (see `add_groups`).
    #[pyo3(signature = (partition, service, spans, hold=None))]
    fn add(
        &mut self,
        py: Python<'_>,
        partition: i64,
        service: &Bound<'_, PyString>,
        spans: &Bound<'_, PyAny>,
        hold: Option<Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let groups = PyList::new(py, [PyTuple::new(py, [service.as_any(), spans])?])?;
        self.add_groups(py, partition, groups.as_any(), hold)
    }

    /// Count one message's spans, given as (service, [span header dict]) groups; returns how many
    /// windows now hold `hold` (see `operators.sli.SliWindows.add_groups`).
    #[pyo3(signature = (partition, groups, hold=None))]
    fn add_groups(
        &mut self,
        py: Python<'_>,
        partition: i64,
        groups: &Bound<'_, PyAny>,
        hold: Option<Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let k_end = intern!(py, "end_time_unix_nano");
        let k_start = intern!(py, "start_time_unix_nano");
        let k_name = intern!(py, "name");
        let k_status = intern!(py, "status_code");
        let k_kind = intern!(py, "kind");
        let k_parent = intern!(py, "parent_span_id");
        let mut touched = 0u64;
        for group in groups.try_iter()? {
            let group = group?;
            let group = group.cast::<PyTuple>()?;
            let raw_service = group.get_item(0)?;
            let service = self.service_id(py, raw_service.cast::<PyString>()?)?;
            let spans = group.get_item(1)?;
            for span in spans.try_iter()? {
                let span = span?;
                let span = span.cast::<PyDict>()?;
                let end = time_ns(&field(span, k_end)?)?;
                let start = time_ns(&field(span, k_start)?)?;
                let name = field(span, k_name)?;
                let op = self.operation_id(py, service, name.cast::<PyString>()?)?;
                let status = self.small_label(py, &field(span, k_status)?)?;
                let kind = self.small_label(py, &field(span, k_kind)?)?;
                let root = span.get_item(k_parent)?.is_none_or(|p| p.is_none());
                touched += self.count(
                    partition,
                    hold.as_ref(),
                    service,
                    op,
                    kind,
                    status,
                    start,
                    end,
                    root,
                )?;
            }
        }
        Ok(touched)
    }

    /// Windows closed by `now` (end + grace ≤ now; all with `flush_all`), merged across partitions
    /// per (window, service, operation, kind, status) in partition order, sorted by that key; they
    /// leave the state.
    #[pyo3(signature = (now_ns, flush_all=false))]
    fn due(&mut self, py: Python<'_>, now_ns: i64, flush_all: bool) -> PyResult<Vec<Window>> {
        let horizon = now_ns as i128 - self.grace_ns as i128;
        let window_ns = self.window_ns;
        let mut closed: Vec<Key> = self
            .open
            .keys()
            .filter(|k| flush_all || (k.2 as i128 + window_ns as i128) <= horizon)
            .copied()
            .collect();
        let plain = &self.labels.plain;
        // the merged key's texts in the Python order, then the partition: partials merge in
        // partition order as the Python's sorted (partition, service) cells do
        let order = |k: &Key| {
            (
                k.2,
                &plain[k.1 as usize],
                &plain[k.3 as usize],
                &plain[k.4 as usize],
                &plain[k.5 as usize],
                k.0,
            )
        };
        closed.sort_by(|a, b| order(a).cmp(&order(b)));
        let mut out: Vec<Window> = Vec::new();
        let mut last: Option<(i64, u32, u32, u32, u32)> = None;
        for key in closed {
            let agg = self.open.remove(&key).expect("a key listed above");
            let mkey = (key.2, key.1, key.3, key.4, key.5);
            if last == Some(mkey) {
                out.last_mut().expect("a window for the key").agg.merge(agg);
                continue;
            }
            last = Some(mkey);
            let texts = &self.labels.texts;
            out.push(Window {
                service: texts[key.1 as usize].clone_ref(py),
                operation: texts[key.3 as usize].clone_ref(py),
                span_kind: texts[key.4 as usize].clone_ref(py),
                status: texts[key.5 as usize].clone_ref(py),
                window_start_ns: key.2,
                window_end_ns: key.2 + window_ns,
                mapping: self.mapping,
                agg,
                holds: None,
            });
        }
        Ok(out)
    }

    /// Forget the open windows of lost partitions; returns how many.
    fn revoke(&mut self, partitions: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut lost = HashSet::new();
        for p in partitions.try_iter()? {
            lost.insert(p?.extract::<i64>()?);
        }
        let before = self.open.len();
        self.open.retain(|k, _| !lost.contains(&k.0));
        Ok(before - self.open.len())
    }
}

/// One emitted window (`operators.sli.WindowAggregate`'s fields the job reads), with its
/// `SliWindow` record built here.
#[pyclass(module = "pipeline._native", name = "SliWindow")]
pub struct Window {
    #[pyo3(get)]
    service: Py<PyString>,
    #[pyo3(get)]
    operation: Py<PyString>,
    #[pyo3(get)]
    span_kind: Py<PyString>,
    #[pyo3(get)]
    status: Py<PyString>,
    #[pyo3(get)]
    window_start_ns: i64,
    #[pyo3(get)]
    window_end_ns: i64,
    mapping: Mapping,
    agg: Agg,
    holds: Option<Py<PyList>>,
}

impl Window {
    fn summary(&self) -> [f64; 7] {
        let a = &self.agg;
        let q = quantiles(
            &a.sketch,
            &self.mapping,
            a.span_count,
            a.min_ms,
            a.max_ms,
            &RECORD_QUANTILES,
        );
        [
            if a.span_count > 0 { a.min_ms } else { 0.0 },
            a.max_ms,
            a.sum_ms,
            q[0],
            q[1],
            q[2],
            q[3],
        ]
    }

    fn sorted_partitions(&self) -> Vec<i64> {
        let mut p = self.agg.partitions.clone();
        p.sort_unstable();
        p
    }
}

#[pymethods]
impl Window {
    #[getter]
    fn span_count(&self) -> u64 {
        self.agg.span_count
    }
    #[getter]
    fn error_count(&self) -> u64 {
        self.agg.error_count
    }
    #[getter]
    fn root_count(&self) -> u64 {
        self.agg.root_count
    }
    #[getter]
    fn min_ms(&self) -> f64 {
        self.agg.min_ms
    }
    #[getter]
    fn max_ms(&self) -> f64 {
        self.agg.max_ms
    }
    #[getter]
    fn sum_ms(&self) -> f64 {
        self.agg.sum_ms
    }
    #[getter]
    fn partials(&self) -> u64 {
        self.agg.partials
    }
    #[getter]
    fn partitions(&self) -> Vec<i64> {
        self.sorted_partitions()
    }

    /// The commit holds this window discharges: one list, the same object on every read (the
    /// job's `Record` keeps it).
    #[getter]
    fn holds(&mut self, py: Python<'_>) -> PyResult<Py<PyList>> {
        if self.holds.is_none() {
            let list = PyList::new(py, self.agg.holds.iter().map(|h| h.bind(py)))?;
            self.holds = Some(list.unbind());
        }
        Ok(self.holds.as_ref().expect("set above").clone_ref(py))
    }

    /// The latency sketch as a Python `ddsketch.DDSketch` (SLO objectives read it; built on demand).
    #[getter]
    fn sketch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = &self.agg.sketch;
        py.import("operators.sli")?
            .getattr("sketch_from_store")?
            .call1((
                self.mapping.relative_accuracy,
                s.store.offset,
                PyList::new(py, &s.store.bins)?,
                if s.store.count > 0.0 {
                    Some((s.store.min_key, s.store.max_key))
                } else {
                    None
                },
                s.store.count,
                s.zero_count,
                s.count,
            ))
    }

    fn quantiles(&self, qs: Vec<f64>) -> Vec<f64> {
        let a = &self.agg;
        quantiles(
            &a.sketch,
            &self.mapping,
            a.span_count,
            a.min_ms,
            a.max_ms,
            &qs,
        )
    }

    /// `operators.sli.window_record` of this window.
    fn record<'py>(
        &self,
        py: Python<'py>,
        worker: &str,
        now_ns: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let a = &self.agg;
        let [min, max, sum, p50, p90, p95, p99] = self.summary();
        let latency = PyDict::new(py);
        for (k, v) in [
            ("min", min),
            ("max", max),
            ("sum", sum),
            ("p50", p50),
            ("p90", p90),
            ("p95", p95),
            ("p99", p99),
        ] {
            latency.set_item(k, v)?;
        }
        let sketch = PyDict::new(py);
        sketch.set_item("relative_accuracy", self.mapping.relative_accuracy)?;
        sketch.set_item("zero_count", a.sketch.zero_count)?;
        sketch.set_item("bin_offset", a.sketch.store.offset)?;
        sketch.set_item("bin_counts", PyList::new(py, &a.sketch.store.bins)?)?;
        let r = PyDict::new(py);
        r.set_item("service", &self.service)?;
        r.set_item("operation", &self.operation)?;
        r.set_item("span_kind", &self.span_kind)?;
        r.set_item("status", &self.status)?;
        r.set_item("window_start_unix_nano", self.window_start_ns)?;
        r.set_item("window_end_unix_nano", self.window_end_ns)?;
        r.set_item("span_count", a.span_count)?;
        r.set_item("error_count", a.error_count)?;
        r.set_item("root_count", a.root_count)?;
        r.set_item("latency_ms", latency)?;
        r.set_item("sketch", sketch)?;
        r.set_item("partitions", self.sorted_partitions())?;
        r.set_item("worker", worker)?;
        r.set_item("emitted_at_unix_nano", now_ns)?;
        Ok(r)
    }

    /// The record's Avro binary encoding (`schemas/sli_window.v1.avsc`), byte for byte what
    /// fastavro writes for `record` (tests/unit/test_native_sli.py).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        worker: &str,
        now_ns: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let a = &self.agg;
        let mut out = Vec::with_capacity(128 + 9 * a.sketch.store.bins.len());
        for s in [
            &self.service,
            &self.operation,
            &self.span_kind,
            &self.status,
        ] {
            avro_string(&mut out, s.bind(py).to_str()?);
        }
        for v in [
            self.window_start_ns,
            self.window_end_ns,
            a.span_count as i64,
            a.error_count as i64,
            a.root_count as i64,
        ] {
            avro_long(&mut out, v);
        }
        for v in self.summary() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.mapping.relative_accuracy.to_le_bytes());
        out.extend_from_slice(&a.sketch.zero_count.to_le_bytes());
        avro_long(&mut out, a.sketch.store.offset);
        let bins = &a.sketch.store.bins;
        if !bins.is_empty() {
            avro_long(&mut out, bins.len() as i64);
            for b in bins {
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        avro_long(&mut out, 0);
        let partitions = self.sorted_partitions();
        if !partitions.is_empty() {
            avro_long(&mut out, partitions.len() as i64);
            for p in partitions {
                avro_long(&mut out, p);
            }
        }
        avro_long(&mut out, 0);
        avro_string(&mut out, worker);
        avro_long(&mut out, now_ns);
        Ok(PyBytes::new(py, &out))
    }
}

/// Avro `long`/`int`: zigzag, then base-128 varint.
fn avro_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn avro_string(out: &mut Vec<u8>, s: &str) {
    avro_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_grows_and_recentres_like_the_python_dense_store() {
        // ddsketch: s = DenseStore(); for k in (5, 300, -200): s.add(k)
        // → offset -202, len 512 (values checked against the Python store in test_native_sli.py)
        let mut s = Store::default();
        s.add(5, 1.0);
        assert_eq!((s.offset, s.bins.len()), (-59, 128));
        s.add(300, 1.0);
        assert_eq!(s.bins.len(), 384);
        assert_eq!(s.bins[(300 - s.offset) as usize], 1.0);
        assert_eq!(s.bins[(5 - s.offset) as usize], 1.0);
        s.add(-200, 2.0);
        assert_eq!(s.bins[(-200 - s.offset) as usize], 2.0);
        assert_eq!(s.count, 4.0);
        assert_eq!((s.min_key, s.max_key), (-200, 300));
    }

    #[test]
    fn avro_long_is_zigzag_varint() {
        let mut out = Vec::new();
        for v in [0, -1, 1, -64, 64, i64::MAX] {
            avro_long(&mut out, v);
        }
        assert_eq!(&out[..6], &[0, 1, 2, 127, 128, 1]);
    }
}
