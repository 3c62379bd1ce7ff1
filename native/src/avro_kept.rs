//! The kept Avro path's span writer (`pipeline/codecs/avro_kept_native.py`): a kept message's
//! `KeptTrace` spans written from its own `SpanBatch` bytes as `pipeline/codecs/avro_kept.py`
//! `AvroKeptWriter` writes them — byte for byte — without fastavro's decode of the batch into
//! dicts and without a Python step per span or attribute.
//!
//! Per kept message, [`AvroKeptSpans::write`] reads the batch (`avro::parse_batch`: fastavro's
//! reading, so the header values are those of the handle `AvroKeptWriter` starts from) and each
//! span's `SpanDetail` with `AvroKeptWriter`'s own strictness (`_Reader`, `_map_entries`: a varint
//! past 10 bytes or 64 bits, a negative length, a union index other than one byte of the seven
//! branches, a nested array, a boolean other than 0/1 in an array, bad UTF-8, trailing bytes):
//! what `AvroKeptWriter` would send the reference way makes this return None, and the caller
//! then asks `AvroKeptWriter` itself.
//!
//! Privacy stays decided in Python: the writer asks its `ask` callable, once per round (at most
//! two), about the distinct inputs it has no answer for — span names, texts (status messages,
//! event names), trace states, attribute map entries by their exact bytes, a SQL statement's
//! entry with its map's `db.system` entries, `with_threshold` of a written trace state — and
//! Python answers with `AvroKeptWriter`'s own rules: the encoded output and the audit counts.
//! Answers are remembered in a bounded memo (entries of at most `MEMO_MAX_BYTES` input bytes;
//! cleared when `memo_size` is reached), so a value seen before costs a hash lookup here. The
//! map-level rules are `AvroKeptWriter._attributes`'s: a repeated input key sends the message
//! the reference way, output keys keep the first one's place and the last one's value, and the
//! `sampling.*` entries update the span's map in place or append.
//!
//! Safety: the byte work runs under `catch_unwind`; a panic hands the whole message to the Python
//! path (`None`), never aborts.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::avro;

/// `avro_kept._MEMO_MAX_BYTES`: a longer input is asked about each time it comes.
const MEMO_MAX_BYTES: usize = 512;
/// `avro_kept._SYSTEM_KEYS`: what the protector's sql rule reads of a statement's map.
const SYSTEM_KEYS: [&[u8]; 2] = [b"db.system", b"db.system.name"];
const EMPTY: u8 = 0;

// ------------------------------------------------------------------ encoding (as fastavro writes)
fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s);
}

// ------------------------------------------------------------------ reading a SpanDetail
/// `avro_kept._Reader`: None wherever it raises `Fallback` (or Python would raise `IndexError`
/// or `UnicodeDecodeError`, which `read_detail` turns into `Fallback`).
struct Strict<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Strict<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// `_Reader.long`: at most 10 bytes, a value within 64 bits.
    fn long(&mut self) -> Option<i64> {
        let mut b = self.byte()?;
        let mut n = (b & 0x7f) as u128;
        let mut shift = 7u32;
        while b & 0x80 != 0 {
            if shift > 63 {
                return None;
            }
            b = self.byte()?;
            n |= ((b & 0x7f) as u128) << shift;
            shift += 7;
        }
        if n >> 64 != 0 {
            return None;
        }
        let n = n as u64;
        Some(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn raw(&mut self, n: i64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn string(&mut self) -> Option<&'a str> {
        let n = self.long()?;
        std::str::from_utf8(self.raw(n)?).ok()
    }

    /// `_Reader.block`: an item count (0: the end); a negative count's byte size is skipped.
    /// i64::MIN (2^63 items in Python) runs off the bytes there: refused here at once.
    fn block(&mut self) -> Option<i64> {
        let n = self.long()?;
        if n < 0 {
            self.long()?;
            return n.checked_neg();
        }
        Some(n)
    }

    /// `_Reader.scalar`.
    fn scalar(&mut self, index: i64) -> Option<()> {
        match index {
            4 => self.string().map(|_| ()),
            2 => self.long().map(|_| ()),
            0 => Some(()),
            3 => self.raw(8).map(|_| ()),
            1 => match self.raw(1)? {
                [0] | [1] => Some(()),
                _ => None,
            },
            5 => {
                let n = self.long()?;
                self.raw(n).map(|_| ())
            }
            _ => None,
        }
    }

    /// `_Reader.array_of_scalars` (read, not kept).
    fn array_of_scalars(&mut self) -> Option<()> {
        let mut m = self.block()?;
        while m != 0 {
            for _ in 0..m {
                let i = self.long()?;
                if i == 6 {
                    return None;
                }
                self.scalar(i)?;
            }
            m = self.block()?;
        }
        Some(())
    }

    /// `_Reader.long` at the position, as `_long_at`.
    fn long_at(&mut self) -> Option<i64> {
        self.long()
    }

    /// A length as `_map_entries` skips it: one even byte inline, else a strict long, never negative.
    fn skip_length(&mut self) -> Option<()> {
        let b = *self.buf.get(self.pos)?;
        let n = if b < 0x80 && b & 1 == 0 {
            self.pos += 1;
            (b >> 1) as usize
        } else {
            usize::try_from(self.long_at()?).ok()?
        };
        self.pos = self.pos.saturating_add(n);
        Some(())
    }

    /// `_map_entries`: the entries of the map here, each as its own bytes.
    fn entries(&mut self) -> Option<Vec<&'a [u8]>> {
        let mut entries = Vec::new();
        loop {
            let b = *self.buf.get(self.pos)?;
            let mut n = if b < 0x80 {
                self.pos += 1;
                ((b >> 1) as i64) ^ -((b & 1) as i64)
            } else {
                self.long_at()?
            };
            if n == 0 {
                return Some(entries);
            }
            if n < 0 {
                self.long_at()?;
                n = n.checked_neg()?;
            }
            for _ in 0..n {
                let start = self.pos;
                self.skip_length()?; // the key
                let u = *self.buf.get(self.pos)?;
                self.pos += 1;
                match u {
                    8 | 10 => self.skip_length()?,
                    4 => {
                        self.long_at()?;
                    }
                    6 => self.pos = self.pos.saturating_add(8),
                    2 => self.pos = self.pos.saturating_add(1),
                    12 => self.array_of_scalars()?,
                    0 => {}
                    _ => return None,
                }
                if self.pos > self.buf.len() {
                    return None;
                }
                entries.push(&self.buf[start..self.pos]);
            }
        }
    }
}

struct Event<'a> {
    time: i64,
    name: &'a str,
    attributes: Vec<&'a [u8]>,
}

struct Link<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    attributes: Vec<&'a [u8]>,
}

#[derive(Default)]
struct Detail<'a> {
    status_message: &'a str,
    attributes: Vec<&'a [u8]>,
    events: Vec<Event<'a>>,
    links: Vec<Link<'a>>,
}

/// `avro_kept.read_detail`; None for one `AvroKeptWriter` sends the reference way.
fn read_detail(detail: &[u8]) -> Option<Detail<'_>> {
    if detail.is_empty() {
        return Some(Detail::default());
    }
    let mut r = Strict {
        buf: detail,
        pos: 0,
    };
    let status_message = r.string()?;
    let attributes = r.entries()?;
    let mut events = Vec::new();
    let mut n = r.block()?;
    while n != 0 {
        for _ in 0..n {
            events.push(Event {
                time: r.long()?,
                name: r.string()?,
                attributes: r.entries()?,
            });
        }
        n = r.block()?;
    }
    let mut links = Vec::new();
    let mut n = r.block()?;
    while n != 0 {
        for _ in 0..n {
            links.push(Link {
                trace_id: r.raw(16)?,
                span_id: r.raw(8)?,
                trace_state: r.string()?,
                attributes: r.entries()?,
            });
        }
        n = r.block()?;
    }
    (r.pos == detail.len()).then_some(Detail {
        status_message,
        attributes,
        events,
        links,
    })
}

// ------------------------------------------------------------------ answers
/// What the writer asks Python (`avro_kept_native.NativeAvroKeptWriter._answer`), by kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Ask {
    /// `protect_name`: the encoded output string
    Name = 0,
    /// `scan_text` (status messages, event names): the encoded output string
    Text = 1,
    /// `protect_tracestate`: the output text
    TraceState = 2,
    /// one map entry's bytes: the protected entry (or "in context": ask with its map's db.system)
    Attribute = 3,
    /// a statement's entry with its map's db.system entries
    InContext = 4,
    /// `with_threshold(trace_state, th)`: the output text
    Threshold = 5,
}

/// What an attribute answer does with its entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// written under `out_key`
    Write,
    /// dropped (its counts still count)
    Drop,
    /// its protection reads the map's db.system: ask again with them
    InContext,
}

/// One answer: for texts the output in `data`; for attributes the input key, what becomes of
/// it, the output key and the encoded output entry. `counts`: audit counts (name id, n).
struct Answer {
    data: Vec<u8>,
    in_key: Vec<u8>,
    out: Out,
    out_key: Vec<u8>,
    counts: Vec<(u32, i64)>,
}

type Memo = HashMap<Vec<u8>, Rc<Answer>>;

/// The memo key of a question: its kind, then its input.
fn memo_key(ask: Ask, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    key.push(ask as u8);
    if let [one] = parts {
        key.extend_from_slice(one);
        return key;
    }
    for part in parts {
        put_long(&mut key, part.len() as i64);
        key.extend_from_slice(part);
    }
    key
}

struct Question {
    ask: Ask,
    key: Vec<u8>,
    parts: Vec<Vec<u8>>,
}

/// One call's answers (memo hits copied in, new answers added) and the questions pending.
#[derive(Default)]
struct Asker {
    call: Memo,
    questions: Vec<Question>,
    asked: HashSet<Vec<u8>>,
}

impl Asker {
    fn get(&self, ask: Ask, parts: &[&[u8]]) -> Option<Rc<Answer>> {
        self.call.get(&memo_key(ask, parts)).cloned()
    }

    /// The answer, or None after noting the question.
    fn answer(&mut self, memo: &Memo, ask: Ask, parts: &[&[u8]]) -> Option<Rc<Answer>> {
        let key = memo_key(ask, parts);
        if let Some(a) = self.call.get(&key) {
            return Some(a.clone());
        }
        if let Some(a) = memo.get(&key) {
            self.call.insert(key, a.clone());
            return Some(a.clone());
        }
        if self.asked.insert(key.clone()) {
            self.questions.push(Question {
                ask,
                key,
                parts: parts.iter().map(|p| p.to_vec()).collect(),
            });
        }
        None
    }

    /// Round one for a map: each entry asked about.
    fn map(&mut self, memo: &Memo, entries: &[&[u8]]) {
        for e in entries {
            self.answer(memo, Ask::Attribute, &[e]);
        }
    }

    /// The map's entries whose input key is one a statement's protection reads.
    fn systems<'a>(entries: &[&'a [u8]], answers: &[Rc<Answer>]) -> Vec<&'a [u8]> {
        entries
            .iter()
            .zip(answers)
            .filter(|(_, a)| SYSTEM_KEYS.contains(&a.in_key.as_slice()))
            .map(|(e, _)| *e)
            .collect()
    }

    /// Round two for a map (every entry answered): its statements asked about in context.
    /// None: a repeated input key (`AvroKeptWriter` sends it the reference way).
    fn map_in_context(&mut self, memo: &Memo, entries: &[&[u8]]) -> Option<()> {
        let answers: Vec<Rc<Answer>> = entries
            .iter()
            .map(|e| self.get(Ask::Attribute, &[e]))
            .collect::<Option<_>>()?;
        for (i, a) in answers.iter().enumerate() {
            if answers[..i].iter().any(|b| b.in_key == a.in_key) {
                return None;
            }
        }
        if answers.iter().any(|a| a.out == Out::InContext) {
            let systems = Self::systems(entries, &answers);
            for (e, a) in entries.iter().zip(&answers) {
                if a.out == Out::InContext {
                    let mut parts: Vec<&[u8]> = vec![e];
                    parts.extend(systems.iter().copied());
                    self.answer(memo, Ask::InContext, &parts);
                }
            }
        }
        Some(())
    }

    /// A map's answers after both rounds, in entry order (statements: their answer in context).
    fn map_answers(&self, entries: &[&[u8]]) -> Option<Vec<Rc<Answer>>> {
        let first: Vec<Rc<Answer>> = entries
            .iter()
            .map(|e| self.get(Ask::Attribute, &[e]))
            .collect::<Option<_>>()?;
        if !first.iter().any(|a| a.out == Out::InContext) {
            return Some(first);
        }
        let systems = Self::systems(entries, &first);
        let mut out = Vec::with_capacity(first.len());
        for (e, a) in entries.iter().zip(first) {
            if a.out == Out::InContext {
                let mut parts: Vec<&[u8]> = vec![e];
                parts.extend(systems.iter().copied());
                let b = self.get(Ask::InContext, &parts)?;
                if b.out == Out::InContext {
                    return None; // asked in context, answered without it: never expected
                }
                out.push(b);
            } else {
                out.push(a);
            }
        }
        Some(out)
    }
}

// ------------------------------------------------------------------ the writer
/// Audit counts in the order first counted (`AvroKeptWriter`'s dict), by name id.
#[derive(Default)]
struct Counts(Vec<(u32, i64)>);

impl Counts {
    fn add(&mut self, hits: &[(u32, i64)]) {
        for &(name, n) in hits {
            match self.0.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 += n,
                None => self.0.push((name, n)),
            }
        }
    }
}

/// A map's output as `AvroKeptWriter._attributes` builds its dict: (output key, entry); a key
/// set again keeps its place and takes the new entry.
#[derive(Default)]
struct OutMap<'a>(Vec<(&'a [u8], &'a [u8])>);

impl<'a> OutMap<'a> {
    fn set(&mut self, key: &'a [u8], data: &'a [u8]) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = data,
            None => self.0.push((key, data)),
        }
    }

    /// The answers of a map's entries, counted in order.
    fn from_answers(answers: &'a [Rc<Answer>], counts: &mut Counts) -> Self {
        let mut map = OutMap::default();
        for a in answers {
            counts.add(&a.counts);
            if a.out == Out::Write {
                map.set(&a.out_key, &a.data);
            }
        }
        map
    }

    /// `avro_kept.map_of`.
    fn write(&self, out: &mut Vec<u8>) {
        if self.0.is_empty() {
            out.push(EMPTY);
            return;
        }
        put_long(out, self.0.len() as i64);
        for (_, data) in &self.0 {
            out.extend_from_slice(data);
        }
        out.push(EMPTY);
    }
}

/// One span to write: its header and its detail.
struct Planned<'a> {
    span: &'a avro::AvroSpan<'a>,
    detail: Detail<'a>,
}

fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok().flatten()
}

/// `AvroKeptWriter._span` (every answer at hand): the encoded `KeptTrace` span, its links'
/// trace IDs.
fn write_span<'a>(
    asker: &Asker,
    p: &Planned<'a>,
    sampling: &[(String, Vec<u8>)],
    threshold: Option<[u8; 8]>,
    privacy: bool,
    counts: &mut Counts,
) -> Option<(Vec<u8>, Vec<&'a [u8]>)> {
    let span = p.span;
    let detail = &p.detail;
    let mut out = Vec::with_capacity(span.detail.len() + 128);
    out.extend_from_slice(span.span_id);
    match span.parent_span_id {
        None => out.push(EMPTY),
        Some(parent) => {
            out.push(2);
            out.extend_from_slice(parent);
        }
    }
    if privacy {
        let a = asker.get(Ask::Name, &[span.name.as_bytes()])?;
        counts.add(&a.counts);
        out.extend_from_slice(&a.data);
    } else {
        put_string(&mut out, span.name.as_bytes());
    }
    put_long(&mut out, span.kind as i64);
    put_long(&mut out, span.start);
    put_long(&mut out, span.end);
    put_long(&mut out, span.status_code as i64);
    let message = detail.status_message.as_bytes();
    if privacy && !message.is_empty() {
        let a = asker.get(Ask::Text, &[message])?;
        counts.add(&a.counts);
        out.extend_from_slice(&a.data);
    } else {
        put_string(&mut out, message);
    }
    let mut ts: Vec<u8> = span.trace_state.as_bytes().to_vec();
    if privacy && !ts.is_empty() {
        let a = asker.get(Ask::TraceState, &[&ts])?;
        counts.add(&a.counts);
        ts = a.data.clone();
    }
    if let Some(th) = threshold {
        ts = asker.get(Ask::Threshold, &[&ts, &th])?.data.clone();
    }
    put_string(&mut out, &ts);
    let answers = asker.map_answers(&detail.attributes)?;
    let mut map = OutMap::from_answers(&answers, counts);
    for (key, data) in sampling {
        map.set(key.as_bytes(), data);
    }
    map.write(&mut out);
    if detail.events.is_empty() && detail.links.is_empty() {
        out.extend_from_slice(&[EMPTY, EMPTY]);
        return Some((out, Vec::new()));
    }
    if detail.events.is_empty() {
        out.push(EMPTY);
    } else {
        put_long(&mut out, detail.events.len() as i64);
        for ev in &detail.events {
            put_long(&mut out, ev.time);
            if privacy {
                let a = asker.get(Ask::Text, &[ev.name.as_bytes()])?;
                counts.add(&a.counts);
                out.extend_from_slice(&a.data);
            } else {
                put_string(&mut out, ev.name.as_bytes());
            }
            let answers = asker.map_answers(&ev.attributes)?;
            OutMap::from_answers(&answers, counts).write(&mut out);
        }
        out.push(EMPTY);
    }
    if detail.links.is_empty() {
        out.push(EMPTY);
    } else {
        put_long(&mut out, detail.links.len() as i64);
        for ln in &detail.links {
            out.extend_from_slice(ln.trace_id);
            out.extend_from_slice(ln.span_id);
            let ts = ln.trace_state.as_bytes();
            if privacy && !ts.is_empty() {
                let a = asker.get(Ask::TraceState, &[ts])?;
                counts.add(&a.counts);
                put_string(&mut out, &a.data);
            } else {
                put_string(&mut out, ts);
            }
            let answers = asker.map_answers(&ln.attributes)?;
            OutMap::from_answers(&answers, counts).write(&mut out);
        }
        out.push(EMPTY);
    }
    Some((out, detail.links.iter().map(|l| l.trace_id).collect()))
}

#[pyclass(unsendable)]
pub struct AvroKeptSpans {
    memo_size: usize,
    memo: Memo,
    names: Vec<Py<PyString>>,
    name_ids: HashMap<String, u32>,
}

impl AvroKeptSpans {
    fn name_id(&mut self, py: Python<'_>, name: &str) -> u32 {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(PyString::new(py, name).unbind());
        self.name_ids.insert(name.to_string(), id);
        id
    }

    fn counts(&mut self, py: Python<'_>, counts: Vec<(String, i64)>) -> Vec<(u32, i64)> {
        counts
            .iter()
            .map(|(name, n)| (self.name_id(py, name), *n))
            .collect()
    }

    /// Ask Python the pending questions. False: an input `AvroKeptWriter` sends the reference
    /// way (answered None: nothing remembered for it).
    fn ask(&mut self, py: Python<'_>, asker: &mut Asker, ask: &Bound<'_, PyAny>) -> PyResult<bool> {
        let questions = std::mem::take(&mut asker.questions);
        if questions.is_empty() {
            return Ok(true);
        }
        let list = PyList::empty(py);
        for q in &questions {
            let a = PyBytes::new(py, &q.parts[0]);
            let b: Bound<'_, PyAny> = match q.ask {
                Ask::InContext => {
                    PyList::new(py, q.parts[1..].iter().map(|p| PyBytes::new(py, p)))?.into_any()
                }
                Ask::Threshold => {
                    let th: [u8; 8] = q.parts[1].as_slice().try_into().unwrap_or([0; 8]);
                    i64::from_le_bytes(th).into_pyobject(py)?.into_any()
                }
                _ => py.None().into_bound(py),
            };
            list.append((q.ask as u8, a, b))?;
        }
        let answers = ask.call1((list,))?;
        let mut fine = true;
        for (q, a) in questions.into_iter().zip(answers.try_iter()?) {
            let a = a?;
            if a.is_none() {
                fine = false;
                continue;
            }
            let answer = match q.ask {
                Ask::Name | Ask::Text | Ask::TraceState | Ask::Threshold => {
                    let (data, counts): (Vec<u8>, Vec<(String, i64)>) = a.extract()?;
                    Answer {
                        data,
                        in_key: Vec::new(),
                        out: Out::Write,
                        out_key: Vec::new(),
                        counts: self.counts(py, counts),
                    }
                }
                Ask::Attribute | Ask::InContext => {
                    #[allow(clippy::type_complexity)]
                    let (in_key, out, out_key, data, counts): (
                        String,
                        u8,
                        String,
                        Vec<u8>,
                        Vec<(String, i64)>,
                    ) = a.extract()?;
                    Answer {
                        data,
                        in_key: in_key.into_bytes(),
                        out: match out {
                            0 => Out::Write,
                            1 => Out::Drop,
                            _ => Out::InContext,
                        },
                        out_key: out_key.into_bytes(),
                        counts: self.counts(py, counts),
                    }
                }
            };
            let answer = Rc::new(answer);
            if q.parts.iter().map(|p| p.len()).sum::<usize>() <= MEMO_MAX_BYTES {
                if self.memo.len() >= self.memo_size {
                    self.memo.clear();
                }
                self.memo.insert(q.key.clone(), answer.clone());
            }
            asker.call.insert(q.key, answer);
        }
        Ok(fine)
    }
}

#[pymethods]
impl AvroKeptSpans {
    #[new]
    fn new(memo_size: usize) -> Self {
        AvroKeptSpans {
            memo_size: memo_size.max(1),
            memo: HashMap::new(),
            names: Vec::new(),
            name_ids: HashMap::new(),
        }
    }

    /// Forget every answer (another protector answers from now on).
    fn clear(&mut self) {
        self.memo.clear();
    }

    /// `AvroKeptWriter.batches` of one kept `SpanBatch` message: None when `AvroKeptWriter`
    /// would send it the reference way (or this reader cannot read it), else
    /// `(trace_id, service, resource, scope_name, spans, counts)`: the batch's envelope fields
    /// for `AvroKeptWriter._envelope_of`, its spans as `new_span((data, link_trace_ids))` and the
    /// spans' audit counts `[(name, n)]` in the order first counted. `sampling`: the
    /// `sampling.*` entries `[(key, encoded entry)]`; `threshold`: the decision's, or None;
    /// `privacy`: a protector is in use (names, texts and trace states are asked about).
    #[allow(clippy::too_many_arguments)]
    fn write<'py>(
        &mut self,
        py: Python<'py>,
        value: &[u8],
        sampling: Vec<(String, Vec<u8>)>,
        threshold: Option<i64>,
        privacy: bool,
        ask: &Bound<'py, PyAny>,
        new_span: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(batch) = guarded(|| avro::parse_batch(value).ok()) else {
            return Ok(None);
        };
        let Some(plans) = guarded(|| {
            batch
                .spans
                .iter()
                .map(|span| {
                    Some(Planned {
                        span,
                        detail: read_detail(span.detail)?,
                    })
                })
                .collect::<Option<Vec<_>>>()
        }) else {
            return Ok(None);
        };
        let mut asker = Asker::default();
        // round one: every input asked about by itself
        for p in &plans {
            let memo = &self.memo;
            if privacy {
                asker.answer(memo, Ask::Name, &[p.span.name.as_bytes()]);
                if !p.detail.status_message.is_empty() {
                    asker.answer(memo, Ask::Text, &[p.detail.status_message.as_bytes()]);
                }
                if !p.span.trace_state.is_empty() {
                    asker.answer(memo, Ask::TraceState, &[p.span.trace_state.as_bytes()]);
                }
            }
            asker.map(memo, &p.detail.attributes);
            for ev in &p.detail.events {
                if privacy {
                    asker.answer(memo, Ask::Text, &[ev.name.as_bytes()]);
                }
                asker.map(memo, &ev.attributes);
            }
            for ln in &p.detail.links {
                if privacy && !ln.trace_state.is_empty() {
                    asker.answer(memo, Ask::TraceState, &[ln.trace_state.as_bytes()]);
                }
                asker.map(memo, &ln.attributes);
            }
        }
        if !self.ask(py, &mut asker, ask)? {
            return Ok(None);
        }
        // round two: statements in their map's context, written trace states with the threshold
        let th = threshold.map(i64::to_le_bytes);
        let mut fine = true;
        for p in &plans {
            let memo = &self.memo;
            fine &= asker.map_in_context(memo, &p.detail.attributes).is_some();
            for ev in &p.detail.events {
                fine &= asker.map_in_context(memo, &ev.attributes).is_some();
            }
            for ln in &p.detail.links {
                fine &= asker.map_in_context(memo, &ln.attributes).is_some();
            }
            if let Some(th) = th {
                let ts = p.span.trace_state.as_bytes();
                let written = if privacy && !ts.is_empty() {
                    match asker.get(Ask::TraceState, &[ts]) {
                        Some(a) => a.data.clone(),
                        None => {
                            fine = false;
                            continue;
                        }
                    }
                } else {
                    ts.to_vec()
                };
                asker.answer(memo, Ask::Threshold, &[&written, &th]);
            }
        }
        if !fine || !self.ask(py, &mut asker, ask)? {
            return Ok(None);
        }
        let Some((spans, counts)) = guarded(|| {
            let mut counts = Counts::default();
            let mut spans = Vec::with_capacity(plans.len());
            for p in &plans {
                spans.push(write_span(&asker, p, &sampling, th, privacy, &mut counts)?);
            }
            Some((spans, counts))
        }) else {
            return Ok(None);
        };
        let out = PyList::empty(py);
        for (data, links) in spans {
            let links = PyTuple::new(py, links.iter().map(|l| PyBytes::new(py, l)))?;
            out.append(new_span.call1(((PyBytes::new(py, &data), links),))?)?;
        }
        let counts = PyList::new(
            py,
            counts
                .0
                .iter()
                .map(|&(name, n)| (self.names[name as usize].clone_ref(py), n)),
        )?;
        Ok(Some(PyTuple::new(
            py,
            [
                PyBytes::new(py, batch.trace_id).into_any(),
                PyString::new(py, batch.service).into_any(),
                PyBytes::new(py, batch.resource).into_any(),
                PyString::new(py, batch.scope_name).into_any(),
                out.into_any(),
                counts.into_any(),
            ],
        )?))
    }
}

/// Adds this module's class to `pipeline._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AvroKeptSpans>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_bytes(n: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_long(&mut out, n);
        out
    }

    #[test]
    fn longs_are_zigzag_varints_as_fastavro_writes_them() {
        assert_eq!(long_bytes(0), [0]);
        assert_eq!(long_bytes(-1), [1]);
        assert_eq!(long_bytes(63), [0x7e]);
        assert_eq!(long_bytes(64), [0x80, 0x01]);
        assert_eq!(
            long_bytes(i64::MIN),
            [0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()
        );
        for n in [0, 1, -1, 300, -300, i64::MAX, i64::MIN] {
            let b = long_bytes(n);
            assert_eq!(Strict { buf: &b, pos: 0 }.long(), Some(n));
        }
    }

    #[test]
    fn a_varint_past_ten_bytes_or_64_bits_is_refused() {
        let eleven = [0x80u8; 10].iter().copied().chain([0]).collect::<Vec<_>>();
        assert_eq!(
            Strict {
                buf: &eleven,
                pos: 0
            }
            .long(),
            None
        );
        let past = [0xffu8; 9]
            .iter()
            .copied()
            .chain([0x02])
            .collect::<Vec<_>>();
        assert_eq!(Strict { buf: &past, pos: 0 }.long(), None);
    }

    #[test]
    fn a_detail_is_read_into_its_entries_and_truncations_never_panic() {
        // status "ok", map {"k": "v", "n": long 5}, one event (time 7, "e", {}), no links
        let mut d = Vec::new();
        put_string(&mut d, b"ok");
        d.push(4); // 2 entries
        let e1_start = d.len();
        put_string(&mut d, b"k");
        d.push(8);
        put_string(&mut d, b"v");
        let e2_start = d.len();
        put_string(&mut d, b"n");
        d.push(4);
        put_long(&mut d, 5);
        let map_end = d.len();
        d.push(0);
        d.push(2);
        put_long(&mut d, 7);
        put_string(&mut d, b"e");
        d.push(0);
        d.push(0);
        d.push(0);
        let detail = read_detail(&d).unwrap();
        assert_eq!(detail.status_message, "ok");
        assert_eq!(
            detail.attributes,
            vec![&d[e1_start..e2_start], &d[e2_start..map_end]]
        );
        assert_eq!(detail.events.len(), 1);
        assert_eq!(detail.events[0].time, 7);
        for cut in 0..d.len() {
            assert!(read_detail(&d[..cut]).is_none() || cut == 0);
        }
        let mut trailing = d.clone();
        trailing.push(0);
        assert!(read_detail(&trailing).is_none());
    }

    #[test]
    fn out_maps_keep_the_first_place_and_the_last_entry() {
        let mut m = OutMap::default();
        m.set(b"a", b"A1");
        m.set(b"b", b"B");
        m.set(b"a", b"A2");
        let mut out = Vec::new();
        m.write(&mut out);
        assert_eq!(out, b"\x04A2B\x00");
    }
}
