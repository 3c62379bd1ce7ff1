//! Property tests: the readers never panic, whatever the bytes (random, or a valid message
//! truncated, bit-flipped or with junk inserted), and every Avro batch they accept re-reads the
//! same after a round trip through its own bytes. The chaos suite's hostile inputs are of these
//! kinds; the differential test (tests/unit/test_native_differential.py) checks the verdicts.

use proptest::prelude::*;
use tailsift_native::times::Bounds;
use tailsift_native::{avro, plan_avro, plan_otlp, proto, rekey, Limits};

fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn avro_batch(spans: &[(i64, i64, u8)]) -> Vec<u8> {
    let mut b = vec![5u8; 16];
    zigzag(3, &mut b);
    b.extend_from_slice(b"svc");
    zigzag(spans.len() as i64, &mut b);
    for &(start, end, kind) in spans {
        b.extend_from_slice(&[1u8; 8]);
        zigzag(0, &mut b);
        zigzag(2, &mut b);
        b.extend_from_slice(b"op");
        zigzag(kind as i64 % 6, &mut b);
        zigzag(start, &mut b);
        zigzag(end, &mut b);
        zigzag(1, &mut b);
        zigzag(0, &mut b);
        zigzag(0, &mut b);
    }
    if !spans.is_empty() {
        zigzag(0, &mut b);
    }
    zigzag(0, &mut b);
    zigzag(0, &mut b);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = proto::parse_request(&bytes);
        let _ = avro::parse_batch(&bytes);
    }

    #[test]
    fn span_limit_checks_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        max_span_bytes in 0i128..64,
        max_attributes in 0i128..8,
    ) {
        let bounds = Bounds { limit_ns: i64::MAX as i128, max_skew_ns: 0, now_ns: 0 };
        let limits = Limits { max_span_bytes, max_attributes };
        let _ = plan_otlp(&bytes, &bounds, &limits);
        let _ = plan_avro(&bytes, &bounds, &limits);
        let _ = avro::attribute_count(&bytes, max_attributes);
        let _ = proto::encoded_size(&[&bytes], proto::M::Span);
        let _ = proto::encoded_size(&[&bytes, &bytes], proto::M::AnyValue);
    }

    #[test]
    fn avro_batches_read_back_and_survive_mutation(
        spans in proptest::collection::vec((any::<i64>(), any::<i64>(), 0u8..6), 0..6),
        at in any::<usize>(),
        flip in 1u8..=255,
        junk in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let b = avro_batch(&spans);
        let got = avro::parse_batch(&b).expect("a well-formed batch");
        prop_assert_eq!(got.spans.len(), spans.len());
        for (s, &(start, end, kind)) in got.spans.iter().zip(&spans) {
            prop_assert_eq!((s.start, s.end, s.kind), (start, end, kind % 6));
        }
        let i = at % b.len();
        let _ = avro::parse_batch(&b[..i]);
        let mut flipped = b.clone();
        flipped[i] ^= flip;
        let _ = avro::parse_batch(&flipped);
        let mut inserted = b.clone();
        inserted.splice(i..i, junk.iter().copied());
        let _ = avro::parse_batch(&inserted);
        let _ = proto::parse_request(&flipped);
        let _ = proto::parse_request(&inserted);
    }

    #[test]
    fn deep_nesting_is_bounded(levels in 0usize..300, group in any::<bool>()) {
        let mut b = Vec::new();
        if group {
            b.extend(std::iter::repeat_n(0x2bu8, levels));
            b.extend(std::iter::repeat_n(0x2cu8, levels));
            prop_assert_eq!(proto::parse_request(&b).is_ok(), levels <= proto::DEPTH_LIMIT as usize);
        } else {
            // Request.resource_spans (1) > ResourceSpans.resource (1) > Resource.attributes (1) >
            // KeyValue.key (1, a string): any nesting of field 1 bodies, each length-prefixed
            let mut inner: Vec<u8> = Vec::new();
            for _ in 0..levels {
                let mut g = vec![0x0a];
                let mut n = inner.len();
                loop {
                    let byte = (n & 0x7f) as u8;
                    n >>= 7;
                    if n == 0 { g.push(byte); break; }
                    g.push(byte | 0x80);
                }
                g.extend_from_slice(&inner);
                inner = g;
            }
            let _ = proto::parse_request(&inner);
        }
    }
}

// ------------------------------------------------------------------ re-keying (rekey.rs)
fn ld(num: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(num << 3 | 2);
    let mut n = body.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(body);
}

/// Per resource_spans: has a resource, has a schema URL, its scope_spans — each: has a scope, the
/// trace (0..3) of each span.
type Shape = [(bool, bool, Vec<(bool, Vec<u8>)>)];

/// A request of `shape`.
fn otlp_request(shape: &Shape) -> Vec<u8> {
    let mut req = Vec::new();
    for (r, (resource, url, scopes)) in shape.iter().enumerate() {
        let mut rs = Vec::new();
        if *resource {
            let mut any = Vec::new();
            ld(1, format!("svc{r}").as_bytes(), &mut any);
            let mut kv = Vec::new();
            ld(1, b"service.name", &mut kv);
            ld(2, &any, &mut kv);
            let mut res = Vec::new();
            ld(1, &kv, &mut res);
            ld(1, &res, &mut rs);
        }
        for (s, (scope, traces)) in scopes.iter().enumerate() {
            let mut ss = Vec::new();
            if *scope {
                let mut sc = Vec::new();
                ld(1, b"lib", &mut sc);
                ld(1, &sc, &mut ss);
            }
            for (i, &t) in traces.iter().enumerate() {
                let mut sp = Vec::new();
                ld(1, &[t + 1; 16], &mut sp);
                ld(2, &[(r * 16 + s * 4 + i) as u8 + 1; 8], &mut sp);
                ld(5, b"op", &mut sp);
                ld(2, &sp.clone(), &mut ss);
            }
            ld(2, &ss, &mut rs);
        }
        if *url {
            ld(3, b"https://schema", &mut rs);
        }
        ld(1, &rs, &mut req);
    }
    req
}

/// Per trace (first-seen order) its ID and its spans: (encoded bytes, service).
type PerTrace = Vec<(Vec<u8>, Vec<(Vec<u8>, String)>)>;

fn per_trace(request: &proto::Request) -> PerTrace {
    let mut out: PerTrace = Vec::new();
    for sp in &request.spans {
        let entry = (
            sp.detail.to_vec(),
            request.services[sp.resource].to_string(),
        );
        match out.iter_mut().find(|(t, _)| t.as_slice() == sp.trace_id) {
            Some((_, spans)) => spans.push(entry),
            None => out.push((sp.trace_id.to_vec(), vec![entry])),
        }
    }
    out
}

fn plan_of<'a>(request: proto::Request<'a>) -> tailsift_native::OtlpPlan<'a> {
    let mut traces: Vec<(&[u8], Vec<usize>)> = Vec::new();
    for (i, sp) in request.spans.iter().enumerate() {
        match traces.iter_mut().find(|(t, _)| *t == sp.trace_id) {
            Some((_, idx)) => idx.push(i),
            None => traces.push((sp.trace_id, vec![i])),
        }
    }
    tailsift_native::OtlpPlan { request, traces }
}

/// Split whatever parses: never a panic, and every copy parses to exactly its trace's spans (same
/// bytes, same order, same service).
fn check_split(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(request) = proto::parse_request(bytes) else {
        return Ok(());
    };
    let want = per_trace(&request);
    let plan = plan_of(request);
    let parts = rekey::split(bytes, &plan).expect("a parsed request splits");
    prop_assert_eq!(parts.len(), want.len());
    for (part, (trace_id, spans)) in parts.iter().zip(&want) {
        let copy = proto::parse_request(part).expect("a copy parses");
        let got = per_trace(&copy);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].0, trace_id);
        prop_assert_eq!(&got[0].1, spans);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn rekeyed_copies_hold_exactly_their_traces_spans(
        shape in proptest::collection::vec(
            (any::<bool>(), any::<bool>(), proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0u8..3, 0..4)), 0..3)),
            0..3),
        at in any::<usize>(),
        flip in 1u8..=255,
        junk in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let b = otlp_request(&shape);
        check_split(&b)?;
        if !b.is_empty() {
            let i = at % b.len();
            check_split(&b[..i])?;
            let mut flipped = b.clone();
            flipped[i] ^= flip;
            check_split(&flipped)?;
            let mut inserted = b.clone();
            inserted.splice(i..i, junk.iter().copied());
            check_split(&inserted)?;
        }
    }

    #[test]
    fn random_bytes_split_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_split(&bytes)?;
    }
}
