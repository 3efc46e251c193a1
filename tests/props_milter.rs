//! Property tests of the milter wire protocol: parsing arbitrary bytes never panics, the
//! reader never allocates more than its bound, and encode/parse round-trip.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use batv::milter::{self, Command, MilterError, Response};
use proptest::prelude::*;

/// Records the largest single allocation on this thread while armed.
struct Peak;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// Runs `f` and returns its value and the largest single allocation it made.
fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let v = f();
    ARMED.with(|a| a.set(false));
    (v, PEAK.with(|p| p.get()))
}

/// Polls a future over an in-memory reader, which is always ready: one poll completes it.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory read was pending"),
    }
}

/// Strings without NUL (which ends a string on the wire).
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,24}"
}

fn bytes_no_nul() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| Command::OptNeg {
            version,
            actions,
            protocol
        }),
        (any::<u8>(), proptest::collection::vec((text(), text()), 0..5))
            .prop_map(|(for_command, macros)| Command::Macro { for_command, macros }),
        (text(), any::<u8>().prop_filter("not U", |f| *f != b'U'), any::<u16>(), text()).prop_map(|(hostname, family, port, address)| {
            Command::Connect {
                hostname,
                family,
                port,
                address,
            }
        }),
        text().prop_map(|hostname| Command::Connect {
            hostname,
            family: b'U',
            port: 0,
            address: String::new()
        }),
        text().prop_map(Command::Helo),
        proptest::collection::vec(text(), 1..5).prop_map(Command::Mail),
        proptest::collection::vec(text(), 1..5).prop_map(Command::Rcpt),
        Just(Command::Data),
        (text(), text()).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::Eoh),
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(Command::Body),
        Just(Command::BodyEob),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNc),
        bytes_no_nul().prop_map(Command::Unknown),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Continue),
        Just(Response::Accept),
        Just(Response::Reject),
        Just(Response::Tempfail),
        Just(Response::Discard),
        Just(Response::Skip),
        Just(Response::Progress),
        "[45][0-9]{2} [^\\x00\\r\\n]{0,30}".prop_map(Response::ReplyCode),
        (text(), proptest::option::of(text())).prop_map(|(from, args)| Response::ChgFrom { from, args }),
        (text(), proptest::option::of(text())).prop_map(|(rcpt, args)| Response::AddRcptPar { rcpt, args }),
        text().prop_map(Response::DelRcpt),
        (text(), text()).prop_map(|(name, value)| Response::AddHeader { name, value }),
        (any::<u32>(), text(), text()).prop_map(|(index, name, value)| Response::InsHeader { index, name, value }),
        (any::<u32>(), text(), text()).prop_map(|(index, name, value)| Response::ChgHeader { index, name, value }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec((any::<u32>(), text()), 0..4)
        )
            .prop_map(|(version, actions, protocol, macros)| Response::OptNeg {
                version,
                actions,
                protocol,
                macros
            }),
    ]
}

/// Bytes that look like milter traffic often enough: known command bytes, NULs, small lengths.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![any::<u8>(), Just(0u8), proptest::sample::select(b"ABCDEHKLMNOQRTU".to_vec())];
    proptest::collection::vec(byte, 0..300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(cmd in proptest::sample::select(b"ABCDEHKLMNOQRTUz\0".to_vec()), payload in wire()) {
        let (_, most) = peak(|| { let _ = milter::parse(cmd, &payload); });
        // Lossy strings are at most 3 times their bytes; string lists 24 bytes a string.
        prop_assert!(most <= 24 * (payload.len() + 1), "{most} bytes for a {}-byte payload", payload.len());
    }

    #[test]
    fn parse_response_never_panics(cmd in any::<u8>(), payload in wire()) {
        let _ = milter::parse_response(cmd, &payload);
    }

    /// Reading arbitrary bytes to the end: no panic, no allocation beyond the bound, each
    /// packet consumes exactly its length, a length over `max` is refused before its body.
    #[test]
    fn read_command_is_bounded(bytes in wire(), max in 1usize..64) {
        let mut r = &bytes[..];
        for _ in 0..bytes.len() + 1 {
            let before = r.len();
            let (got, most) = peak(|| now(milter::read_packet(&mut r, max)));
            prop_assert!(most <= max, "{most} bytes allocated, max {max}");
            match got {
                Ok(None) => { prop_assert_eq!(before, 0); break; }
                Ok(Some((cmd, payload))) => {
                    prop_assert_eq!(before - r.len(), 5 + payload.len());
                    prop_assert!(payload.len() < max);
                    let (_, most) = peak(|| { let _ = milter::parse(cmd, &payload); });
                    prop_assert!(most <= 24 * max);
                }
                Err(MilterError::TooLong(n)) => { prop_assert!(n > max); prop_assert_eq!(before - r.len(), 4); break; }
                Err(_) => break,
            }
        }
        let mut r = &bytes[..];
        let (_, most) = peak(|| while let Ok(Some(_)) = now(milter::read_command(&mut r, max)) {});
        prop_assert!(most <= 24 * max);
    }

    #[test]
    fn huge_length_is_refused_before_allocation(len in (milter::MAX_PACKET as u32 + 1)..=u32::MAX, tail in wire()) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend(tail);
        let mut r = &bytes[..];
        let (got, most) = peak(|| now(milter::read_command(&mut r, milter::MAX_PACKET)));
        prop_assert!(matches!(got, Err(MilterError::TooLong(n)) if n == len as usize));
        prop_assert!(most < 1024, "{most} bytes allocated");
    }

    #[test]
    fn commands_round_trip(c in command()) {
        let bytes = milter::encode_command(&c);
        prop_assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        prop_assert_eq!(milter::parse(bytes[4], &bytes[5..]).unwrap(), c.clone());
        let mut r = &bytes[..];
        prop_assert_eq!(now(milter::read_command(&mut r, milter::MAX_PACKET)).unwrap(), Some(c));
        prop_assert!(r.is_empty());
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let bytes = milter::try_encode(&resp).unwrap();
        prop_assert_eq!(&bytes, &milter::encode(&resp));
        prop_assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        prop_assert_eq!(milter::parse_response(bytes[4], &bytes[5..]).unwrap(), resp);
    }

    /// Any reply text encodes to one NUL-terminated line with no lone '%'.
    #[test]
    fn reply_text_is_sanitized(text in any::<String>()) {
        let bytes = milter::encode(&Response::ReplyCode(format!("550 5.7.1 {text}")));
        let body = &bytes[5..bytes.len() - 1];
        prop_assert_eq!(bytes[bytes.len() - 1], 0);
        prop_assert!(!body.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
        let s = std::str::from_utf8(body).unwrap();
        prop_assert_eq!(s.replace("%%", "").contains('%'), false);
    }
}
