//! A reader for `schemas/span_batch.v1.avsc` (schemaless Avro `SpanBatch`), borrowing from the
//! message bytes. It reads what fastavro's `schemaless_reader` reads, with the same acceptance:
//! zigzag varints, `fixed` ids, the `["null", SpanId]` union, enum indexes, arrays in blocks
//! (a negative count is followed by a block size), UTF-8 strings, and no trailing bytes.
//!
//! fastavro's C reader has three quirks, kept here because the Python decoder is the reference
//! (the differential test finds any difference): a long may have any number of bytes, each 7-bit
//! group shifted modulo 64 (x86's shift); a union or enum index may be negative, counting from the
//! end as Python's list indexing does (`-1` = the last symbol); a block count of i64::MIN negates
//! to itself and reads as an empty block.
//!
//! Why not `apache-avro`: it decodes into a `Value` tree (a String per name, a Vec per id, the
//! detail bytes copied) — the allocation this reader exists to avoid — and its schema
//! resolution refuses or accepts some hostile inputs differently from fastavro.

use crate::Error;

pub type R<T> = Result<T, Error>;

const KINDS: usize = 6;
const STATUSES: usize = 3;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Malformed("truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A zigzag long, as fastavro reads it: no length limit, shifts modulo 64 (`wrapping_shl`).
    /// Bounded by the message: every group consumes a byte.
    fn long(&mut self) -> R<i64> {
        let mut n: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let b = self.take(1)?[0];
            n |= ((b & 0x7f) as u64).wrapping_shl(shift);
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
            shift = shift.wrapping_add(7);
        }
    }

    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.long()?;
        if n < 0 {
            return Err(Error::Malformed("negative length"));
        }
        self.take(usize::try_from(n).map_err(|_| Error::Malformed("length too large"))?)
    }

    fn string(&mut self) -> R<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Error::Malformed("string is not UTF-8"))
    }

    /// A union branch or enum symbol index among `n`, with Python's negative indexing.
    fn index(&mut self, n: usize) -> R<u8> {
        let i = self.long()?;
        let n = n as i64;
        if !(-n..n).contains(&i) {
            return Err(Error::Malformed("union or enum index out of range"));
        }
        Ok(i.rem_euclid(n) as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroSpan<'a> {
    pub span_id: &'a [u8],
    pub parent_span_id: Option<&'a [u8]>,
    pub name: &'a str,
    pub kind: u8,
    pub start: i64,
    pub end: i64,
    pub status_code: u8,
    pub trace_state: &'a str,
    pub detail: &'a [u8],
}

#[derive(Debug)]
pub struct Batch<'a> {
    pub trace_id: &'a [u8],
    pub service: &'a str,
    pub spans: Vec<AvroSpan<'a>>,
    /// the encoded `Resource` and the scope name: read by the kept writer (`avro_kept.rs`) only
    pub resource: &'a [u8],
    pub scope_name: &'a str,
}

fn span<'a>(r: &mut Reader<'a>) -> R<AvroSpan<'a>> {
    let span_id = r.take(8)?;
    let parent_span_id = match r.index(2)? {
        0 => None,
        _ => Some(r.take(8)?),
    };
    Ok(AvroSpan {
        span_id,
        parent_span_id,
        name: r.string()?,
        kind: r.index(KINDS)?,
        start: r.long()?,
        end: r.long()?,
        status_code: r.index(STATUSES)?,
        trace_state: r.string()?,
        detail: r.bytes()?,
    })
}

pub fn parse_batch(buf: &[u8]) -> R<Batch<'_>> {
    let mut r = Reader { buf, pos: 0 };
    let trace_id = r.take(16)?;
    let service = r.string()?;
    let mut spans = Vec::new();
    loop {
        let mut count = r.long()?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = count.wrapping_neg(); // i64::MIN stays negative: no items (fastavro)
            r.long()?; // the block's size in bytes, which a reader may use to skip it
        }
        for _ in 0..count {
            // no reserve(count): a hostile count must not allocate before the bytes are there
            spans.push(span(&mut r)?);
        }
    }
    let resource = r.bytes()?; // decoded only for kept traces
    let scope_name = r.string()?;
    if r.pos != buf.len() {
        return Err(Error::Malformed("trailing bytes after the record"));
    }
    Ok(Batch {
        trace_id,
        service,
        spans,
        resource,
        scope_name,
    })
}

// ------------------------------------------------------------------ ingest.max_attributes_per_span
/// `pipeline/codecs/avro.py` `attribute_count`, to the letter: how many attributes an encoded
/// `SpanDetail` holds, read from the attribute map's block headers (counting stops past `stop`);
/// 0 when it runs off the bytes. The detail is opaque at ingest (any bytes), so the reference's
/// arithmetic is kept exactly: Python ints (i128 here: a long has at most 10 groups, 70 bits),
/// a negative string length or block size moving the position backwards, and a negative position
/// reading from the end as Python's indexing does.
pub fn attribute_count(detail: &[u8], stop: i128) -> i128 {
    fn at(buf: &[u8], pos: i128) -> Option<u8> {
        let n = buf.len() as i128;
        let i = if pos < 0 { pos + n } else { pos };
        (0..n).contains(&i).then(|| buf[i as usize])
    }
    /// `_read_long`: at most 10 bytes (the 10th's continuation bit ignored)
    fn read_long(buf: &[u8], mut pos: i128) -> Option<(i128, i128)> {
        let mut b = at(buf, pos)?;
        let mut n = (b & 0x7f) as i128;
        let mut shift = 7;
        pos += 1;
        while b & 0x80 != 0 && shift < 70 {
            b = at(buf, pos)?;
            n |= ((b & 0x7f) as i128) << shift;
            shift += 7;
            pos += 1;
        }
        Some(((n >> 1) ^ -(n & 1), pos))
    }
    let count = || -> Option<i128> {
        let (length, pos) = read_long(detail, 0)?; // status_message
        let mut pos = pos + length;
        let mut total: i128 = 0;
        while total <= stop {
            let (count, p) = read_long(detail, pos)?;
            if count >= 0 {
                return Some(total + count);
            }
            let (size, p) = read_long(detail, p)?;
            total -= count;
            pos = p + size;
        }
        Some(total)
    };
    count().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(v: i64, out: &mut Vec<u8>) {
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

    fn string(s: &[u8], out: &mut Vec<u8>) {
        long(s.len() as i64, out);
        out.extend_from_slice(s);
    }

    fn batch(spans: &[Vec<u8>], negative_block: bool) -> Vec<u8> {
        let mut b = vec![9u8; 16];
        string(b"cart", &mut b);
        if negative_block {
            long(-(spans.len() as i64), &mut b);
            long(spans.iter().map(Vec::len).sum::<usize>() as i64, &mut b);
        } else {
            long(spans.len() as i64, &mut b);
        }
        for s in spans {
            b.extend_from_slice(s);
        }
        long(0, &mut b);
        string(b"", &mut b);
        string(b"scope", &mut b);
        b
    }

    fn span(parent: bool, kind: i64) -> Vec<u8> {
        let mut s = vec![3u8; 8];
        if parent {
            long(1, &mut s);
            s.extend_from_slice(&[4u8; 8]);
        } else {
            long(0, &mut s);
        }
        string(b"op", &mut s);
        long(kind, &mut s);
        long(100, &mut s);
        long(200, &mut s);
        long(2, &mut s);
        string(b"", &mut s);
        string(b"\x01\x02", &mut s);
        s
    }

    #[test]
    fn reads_a_batch_in_one_or_negative_blocks() {
        for neg in [false, true] {
            let b = batch(&[span(false, 2), span(true, 3)], neg);
            let got = parse_batch(&b).unwrap();
            assert_eq!(got.service, "cart");
            assert_eq!(got.spans.len(), 2);
            assert_eq!(got.spans[0].parent_span_id, None);
            assert_eq!(got.spans[1].parent_span_id, Some(&[4u8; 8][..]));
            assert_eq!(
                (got.spans[1].kind, got.spans[1].start, got.spans[1].end),
                (3, 100, 200)
            );
            assert_eq!(got.spans[1].status_code, 2);
            assert_eq!(got.spans[1].detail, b"\x01\x02");
        }
    }

    #[test]
    fn refuses_bad_enum_trailing_bytes_and_every_truncation() {
        assert!(parse_batch(&batch(&[span(false, 6)], false)).is_err());
        assert!(parse_batch(&batch(&[span(false, -7)], false)).is_err());
        // fastavro's Python indexing: -1 is the last symbol
        assert_eq!(
            parse_batch(&batch(&[span(false, -1)], false))
                .unwrap()
                .spans[0]
                .kind,
            5
        );
        let mut b = batch(&[span(true, 1)], false);
        b.push(0);
        assert!(parse_batch(&b).is_err());
        b.pop();
        for cut in 0..b.len() {
            assert!(parse_batch(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn huge_block_count_without_bytes_fails_without_allocating() {
        let mut b = vec![9u8; 16];
        string(b"x", &mut b);
        long(i64::MAX, &mut b);
        assert!(parse_batch(&b).is_err());
        let mut b = vec![9u8; 16];
        string(b"x", &mut b);
        long(i64::MIN, &mut b);
        assert!(parse_batch(&b).is_err());
    }

    #[test]
    fn overlong_longs_shift_modulo_64_like_fastavro() {
        let mut r = Reader {
            buf: &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            pos: 0,
        };
        assert_eq!(r.long().unwrap(), 32); // bit 70 lands on bit 6: 64, zigzag 32
    }

    #[test]
    fn attribute_count_reads_block_headers_as_the_python_reader_does() {
        let mut d = Vec::new();
        string(b"msg", &mut d);
        long(3, &mut d); // one block of 3 entries
        assert_eq!(attribute_count(&d, 10), 3);
        let mut d = Vec::new();
        string(b"", &mut d);
        long(-2, &mut d); // blocks with a size: counted on, the block skipped
        long(0, &mut d);
        long(-3, &mut d);
        long(0, &mut d);
        long(1, &mut d);
        assert_eq!(attribute_count(&d, 10), 6);
        assert_eq!(attribute_count(&d, 1), 2); // stops once past the bound
        assert_eq!(attribute_count(b"", 10), 0);
        // a negative string length moves back: Python's buf[-1] reads the last byte (0x06 = 3)
        assert_eq!(attribute_count(&[0x03, 0x06], 10), 3);
        // off the bytes: 0
        assert_eq!(attribute_count(&[0x00, 0x01, 0x7f], 10), 0);
    }
}
