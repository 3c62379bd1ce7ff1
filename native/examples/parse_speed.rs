// Times the pure-Rust readers on messages dumped to a file (u32 LE length + bytes, repeated):
// cargo run --release --example parse_speed -- FILE avro|otlp
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("file");
    let mut msgs = Vec::new();
    let mut p = 0;
    while p + 4 <= data.len() {
        let n = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        msgs.push(&data[p + 4..p + 4 + n]);
        p += 4 + n;
    }
    let t = Instant::now();
    let mut spans = 0;
    for _ in 0..100 {
        for m in &msgs {
            spans += match args[2].as_str() {
                "avro" => tailsift_native::avro::parse_batch(m)
                    .map(|b| b.spans.len())
                    .unwrap_or(0),
                _ => tailsift_native::proto::parse_request(m)
                    .map(|r| r.spans.len())
                    .unwrap_or(0),
            };
        }
    }
    println!(
        "{} spans, {:.3} us/span",
        spans,
        t.elapsed().as_secs_f64() * 1e6 / spans as f64
    );
}
