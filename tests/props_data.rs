//! Properties of the DATA scanner (`batv::smtp::DataScan`, `relay_data`) on random byte
//! streams rich in CR, LF and dots: what goes downstream is canonical (CRLF only), the
//! message ends exactly where a lone `.` line ends that output and where Postfix reading the
//! raw stream ends it, and neither the reader's buffer size nor pauses change a byte.
//! Everything runs in memory; a read never waits.

#[path = "common/data.rs"]
mod data;

use std::time::Duration;

use batv::smtp::{relay_data, DataEnd, DataScan};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, BufReader};

const IDLE: Duration = Duration::from_secs(5);
const CAPACITIES: [usize; 5] = [1, 2, 3, 7, 4096];

/// How a relay went: its end, what the downstream got, what was left for the command reader.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    end: DataEnd,
    out: Vec<u8>,
    rest: Vec<u8>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Relay `input` through a reader of `capacity`, first in stages of `budgets` octets
/// (as session/data.rs's hold does), then to the end. Also: the input octets read at each pause.
fn relay(input: &[u8], capacity: usize, budgets: &[u64]) -> (Run, Vec<usize>) {
    block_on(async {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        let mut scan = DataScan::default();
        let mut pauses = Vec::new();
        let mut end = DataEnd::Paused;
        for &b in budgets {
            end = scan.relay(&mut r, &mut out, IDLE, b).await.expect("in-memory relay");
            if end != DataEnd::Paused {
                break;
            }
            pauses.push(input.len() - r.get_ref().len() - r.buffer().len());
        }
        if end == DataEnd::Paused {
            end = scan.relay(&mut r, &mut out, IDLE, u64::MAX).await.expect("in-memory relay");
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.expect("in-memory read");
        (Run { end, out, rest }, pauses)
    })
}

/// `relay_data` in one go.
fn one_shot(input: &[u8], capacity: usize) -> Run {
    block_on(async {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        let end = relay_data(&mut r, &mut out, IDLE).await.expect("in-memory relay");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.expect("in-memory read");
        Run { end, out, rest }
    })
}

/// The scanner before bare CRs were line breaks: bare LF to CRLF, end at the first `.`
/// line, everything else as it came.
fn lf_only(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut at = 0;
    for line in input.split_inclusive(|&b| b == b'\n') {
        at += line.len();
        match line.strip_suffix(b"\n") {
            Some(c) => {
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
                if c == b"." {
                    return (out, Some(at));
                }
            }
            // A partial line: its leading dot is held back.
            None if line == b"." => {}
            None => out.extend_from_slice(line),
        }
    }
    (out, None)
}

/// Octets biased towards what decides where lines and messages end.
fn tricky() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => Just(&b"\r"[..]),
            6 => Just(&b"\n"[..]),
            5 => Just(&b"."[..]),
            4 => Just(&b"\r\n"[..]),
            2 => Just(&b".\r\n"[..]),
            2 => Just(&b"a"[..]),
            1 => Just(&b"M"[..]),
            1 => Just(&b"x y"[..]),
            1 => Just(&b"\0"[..]),
            1 => Just(&b"\xff"[..]),
        ],
        0..120,
    )
    .prop_map(|v| v.concat())
}

/// Text without CR or LF, for one line.
fn line_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'.'), Just(b'a'), Just(b' '), Just(0u8), Just(0xe9u8)], 0..8)
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_output_is_canonical_and_ends_where_every_reader_ends(input in tricky()) {
        let run = one_shot(&input, 7);
        prop_assert!(data::is_canonical(&run.out), "bare CR or LF in {} from {}", show(&run.out), show(&input));
        // Complete iff the output ends with the terminator line and has no earlier one.
        let lines: Vec<&[u8]> = run.out.split_inclusive(|&b| b == b'\n').collect();
        let terminators = lines.iter().filter(|l| **l == b".\r\n").count();
        match run.end {
            DataEnd::Complete { bytes } => {
                prop_assert_eq!(bytes, run.out.len() as u64);
                prop_assert_eq!(terminators, 1, "{}", show(&run.out));
                prop_assert_eq!(lines.last().copied(), Some(&b".\r\n"[..]));
            }
            DataEnd::Incomplete => prop_assert_eq!(terminators, 0, "{}", show(&run.out)),
            DataEnd::Paused => prop_assert!(false, "paused without a budget"),
        }
        // The end is where Postfix, reading the raw stream, ends the message; the rest is
        // untouched for the command reader.
        let end = data::postfix_end(&input);
        prop_assert_eq!(matches!(run.end, DataEnd::Complete { .. }), end.is_some(), "{}", show(&input));
        if let Some(n) = end {
            prop_assert_eq!(show(&run.rest), show(&input[n..]));
        }
        // And the octets are those of the line-by-line model.
        let (want, model_end) = data::canonical(&input);
        prop_assert_eq!(model_end, end);
        prop_assert_eq!(show(&run.out), show(&want), "from {}", show(&input));
    }

    #[test]
    fn the_buffer_size_changes_nothing(input in tricky()) {
        let first = one_shot(&input, CAPACITIES[0]);
        for cap in &CAPACITIES[1..] {
            prop_assert_eq!(&one_shot(&input, *cap), &first, "capacity {} on {}", cap, show(&input));
        }
    }

    #[test]
    fn pauses_change_nothing(
        input in tricky(),
        budgets in prop::collection::vec(1u64..24, 0..8),
        cap in prop::sample::select(&CAPACITIES[..]),
    ) {
        let whole = one_shot(&input, 4096);
        let (staged, pauses) = relay(&input, cap, &budgets);
        // The held head plus the rest is the one-shot output.
        prop_assert_eq!(&staged, &whole, "budgets {:?}, capacity {} on {}", budgets, cap, show(&input));
        // A stage pauses after reading exactly its budget, if the message has not ended by
        // then (at the end of the input, it pauses before it can see the end).
        let read = input.len() - whole.rest.len();
        let complete = matches!(whole.end, DataEnd::Complete { .. });
        let mut want = Vec::new();
        let mut total = 0;
        for &b in &budgets {
            total += b as usize;
            if total < read || !complete && total == read {
                want.push(total);
            } else {
                break;
            }
        }
        prop_assert_eq!(pauses, want, "budgets {:?}", budgets);
    }

    #[test]
    fn a_canonical_stream_passes_byte_identical(
        lines in prop::collection::vec(line_text(), 0..16),
        tail in tricky(),
    ) {
        let mut input: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain(*b"\r\n")).collect();
        input.extend_from_slice(b".\r\n");
        input.extend_from_slice(&tail);
        let run = one_shot(&input, 7);
        let n = data::postfix_end(&input).expect("a terminator line");
        prop_assert!(matches!(run.end, DataEnd::Complete { .. }), "{:?}", run.end);
        prop_assert_eq!(show(&run.out), show(&input[..n]));
        prop_assert_eq!(show(&run.rest), show(&input[n..]));
    }

    #[test]
    fn without_cr_nothing_changed(input in tricky().prop_map(|v| v.into_iter().filter(|&b| b != b'\r').collect::<Vec<u8>>())) {
        let run = one_shot(&input, 3);
        let (want, end) = lf_only(&input);
        prop_assert_eq!(show(&run.out), show(&want), "from {}", show(&input));
        prop_assert_eq!(matches!(run.end, DataEnd::Complete { .. }), end.is_some());
    }
}
