//! Known answers (RFC 2202 and 4231 HMAC vectors, Exim's prvs, whole native tags) and
//! the parsers' edge cases.

use hmac::{KeyInit, Mac};

use super::mac::*;
use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ours256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    TagKey::new(key).sha256.mac::<32>([msg, b"", b"", b""], false).to_vec()
}

fn ours1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    TagKey::new(key).sha1.mac::<20>([msg, b"", b"", b""], false).to_vec()
}

#[test]
fn hmac_known_answers() {
    // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
    assert_eq!(
        hex(&ours256(&[0x0b; 20], b"Hi There")),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    assert_eq!(
        hex(&ours256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&ours256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    // RFC 2202 test cases 1 and 6.
    assert_eq!(hex(&ours1(&[0x0b; 20], b"Hi There")), "b617318655057264e28bc0b6fb378c8ef146be00");
    assert_eq!(
        hex(&ours1(&[0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First")),
        "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    );
}

#[test]
fn tag_known_answers() {
    // Whole tags, fixed before the HMAC and codecs moved to ring and data-encoding (the
    // hand-written ones gave exactly these). Checked against an implementation of its
    // own: Python's hmac module and base64.b32encode(...).lower(); the prvs hashes are
    // also the first 6 hex digits of Exim's `${hmac{sha1}{secret}{KDDDaddr}}`.
    let key = TagKey::new(b"a shared secret");
    for (scheme, addr, key_id, ddd, want) in [
        (Scheme::Prvs, "jane.doe@example.org", 0, 787, "prvs=0787b36d66=jane.doe@example.org"),
        (Scheme::Prvs, "Jane.Doe@Example.org", 3, 2, "prvs=3002b7f68c=Jane.Doe@Example.org"),
        (
            Scheme::Native,
            "jane.doe@example.org",
            0,
            787,
            "prvs=0787cuxbi73g=jane.doe@example.org",
        ),
        (
            Scheme::Native,
            "Jane.Doe@Example.org",
            3,
            2,
            "prvs=3002lx64eef2=Jane.Doe@Example.org",
        ),
        (Scheme::Native, "x@bücher.example", 9, 999, "prvs=9999y6nvzucf=x@bücher.example"),
        (
            Scheme::Native,
            "\"john doe\"@example.com",
            1,
            787,
            "\"prvs=1787bvrs7u2z=john doe\"@example.com",
        ),
    ] {
        let a = address::parse(addr).unwrap();
        assert_eq!(
            sign(&key, key_id, scheme, Syntax::Prefix, &a, ddd).unwrap(),
            want,
            "{scheme} {addr}"
        );
        let today = 20_000 + (ddd as i64 - 20_000).rem_euclid(1000);
        assert!(verify(want, today, Schemes::ALL, |_| Some(&key)).unwrap().is_valid(), "{want}");
    }
}

#[test]
fn native_hash_lower_cases_the_local_part() {
    let k = TagKey::new(b"secret");
    for local in ["Jane.Doe", "x", &"AbC".repeat(30), &"Q".repeat(300), "Ärger.ÖL"] {
        let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
        r.update(format!("3123{}@xn--bcher-kva.example", local.to_ascii_lowercase()).as_bytes());
        let want = r.finalize().into_bytes();
        assert_eq!(k.native_hash(b"3123", local, "xn--bcher-kva.example"), want[..5], "{local}");
    }
}

#[test]
fn hmac_matches_the_reference_at_every_length_and_split() {
    // The gathering and lower-casing in `mac` (the HMAC itself is the reference's, and
    // the known answers above pin it): lengths across the block paddings and the stack
    // buffer's pieces, keys shorter, equal to and longer than the block, four parts.
    for key_len in [0usize, 1, 20, 63, 64, 65, 200] {
        let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
        let k = TagKey::new(&key);
        for len in 0..3 * GATHER + 2 {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 + key_len) as u8).collect();
            let split = len / 3;
            let parts = [&msg[..split.min(4)], &msg[split.min(4)..split], b"", &msg[split..]];
            let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            r.update(&msg);
            assert_eq!(
                k.sha256.mac::<32>(parts, false),
                r.finalize().into_bytes()[..],
                "sha256 key {key_len} msg {len}"
            );
            let mut r = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
            r.update(&msg);
            assert_eq!(
                k.sha1.mac::<20>(parts, false),
                r.finalize().into_bytes()[..],
                "sha1 key {key_len} msg {len}"
            );
            // Lower-casing: ASCII letters only, every other byte as it is.
            let text: Vec<u8> = (0..len).map(|i| b"aZ09.Q@x[`{\xc3\x84@AZ"[i % 16]).collect();
            let cut = [0, len / 4, len / 2, len * 3 / 4, len];
            let parts: [&[u8]; 4] = std::array::from_fn(|i| &text[cut[i]..cut[i + 1]]);
            let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            r.update(&text.to_ascii_lowercase());
            assert_eq!(k.sha256.mac::<32>(parts, true), r.finalize().into_bytes()[..], "lower, msg {len}");
        }
    }
}

#[test]
fn plain_tags_take_the_fast_path() {
    let keys = [TagKey::new(b"k0"), TagKey::new(b"k1")];
    let lookup = |k: u8| keys.get(k as usize);
    for scheme in [Scheme::Native, Scheme::Prvs] {
        let a = address::parse("Jane.Doe@Example.org").unwrap();
        let signed = sign(&keys[1], 1, scheme, Syntax::Prefix, &a, day_stamp(20_000, 7)).unwrap();
        let fast = verify_plain(&signed, 20_000, Schemes::ALL, &lookup);
        assert!(
            matches!(&fast, Some(Verdict::Valid(c)) if c.original == "Jane.Doe@Example.org"),
            "{fast:?}"
        );
        assert_eq!(fast, Some(verify_general(&signed, 20_000, Schemes::ALL, lookup).unwrap()));
        // Quoted and UTF-8 addresses go the general way.
        let q = address::parse("\"j d\"@example.org").unwrap();
        assert_eq!(
            verify_plain(
                &sign(&keys[1], 1, scheme, Syntax::Prefix, &q, 7).unwrap(),
                20_000,
                Schemes::ALL,
                &lookup
            ),
            None
        );
    }
}

#[test]
fn only_accepted_schemes_verify() {
    let keys = [TagKey::new(b"k0"), TagKey::new(b"k1")];
    let lookup = |k: u8| keys.get(k as usize);
    for (scheme, other) in [(Scheme::Native, Scheme::Prvs), (Scheme::Prvs, Scheme::Native)] {
        for a in ["jane@example.org", "\"j d\"@example.org"] {
            let a = address::parse(a).unwrap();
            let signed = sign(&keys[1], 1, scheme, Syntax::Prefix, &a, day_stamp(20_000, 7)).unwrap();
            assert!(verify(&signed, 20_000, Schemes::of([scheme]), lookup).unwrap().is_valid());
            let refused = verify(&signed, 20_000, Schemes::of([other]), lookup).unwrap();
            assert!(
                matches!(refused, Verdict::Malformed(w) if w.contains("verify_schemes")),
                "{refused:?}"
            );
            // The fast path and the general one agree on the refusal too.
            assert_eq!(verify_general(&signed, 20_000, Schemes::of([other]), lookup).unwrap(), refused);
        }
    }
}

#[test]
fn base32_round_trip() {
    let b = [0xde, 0xad, 0xbe, 0xef, 0x01];
    let e = base32_40(&b);
    assert_eq!(&e, b"32w353yb");
    assert_eq!(unbase32_40(&e), Some(b));
    assert_eq!(unbase32_40(b"32W353YB"), Some(b));
    assert_eq!(unbase32_40(b"32w353y1"), None);
}

#[test]
fn base32_alphabet_and_case() {
    // RFC 4648 §6 in lower case: every symbol in order, then the same read in upper
    // and mixed case; nothing outside the alphabet, no padding, exactly 8 characters.
    assert_eq!(&base32_40(&[0x00, 0x44, 0x32, 0x14, 0xc7]), b"abcdefgh");
    assert_eq!(unbase32_40(b"IJKLMNOP"), Some([0x42, 0x54, 0xb6, 0x35, 0xcf]));
    assert_eq!(&base32_40(&[0x42, 0x52, 0xd4, 0xe3, 0x4c]), b"ijjnjy2m");
    assert_eq!(&base32_40(&[0xff; 5]), b"77777777");
    assert_eq!(&base32_40(&[0; 5]), b"aaaaaaaa");
    let all = b"abcdefghijklmnopqrstuvwxyz234567";
    for chunk in all.chunks(8) {
        let d = unbase32_40(chunk).unwrap();
        assert_eq!(&base32_40(&d), chunk);
        assert_eq!(unbase32_40(&chunk.to_ascii_uppercase()), Some(d));
    }
    assert_eq!(unbase32_40(b"IjJnJy2M"), Some([0x42, 0x52, 0xd4, 0xe3, 0x4c]));
    for bad in [
        &b"aaaaaaa0"[..],
        b"aaaaaaa1",
        b"aaaaaaa8",
        b"aaaaaaa9",
        b"aaaaaa==",
        b"aaaaaaa\xc3",
        b"aaaaaaa",
        b"aaaaaaaaa",
    ] {
        assert_eq!(unbase32_40(bad), None, "{bad:?}");
    }
}

#[test]
fn hex_round_trip() {
    assert_eq!(&hex_3(&[0x0a, 0xbc, 0xff]), b"0abcff");
    assert_eq!(unhex_3(b"0ABCff"), Some([0x0a, 0xbc, 0xff]));
    assert_eq!(unhex_3(b"0abcfg"), None);
    assert_eq!(unhex_3(b"0abcf"), None);
    assert_eq!(unhex_3(b"+abcff"), None);
    assert_eq!(&hex_3(&[0x12, 0x34, 0x56]), b"123456");
}

#[test]
fn window() {
    let today = 20_780; // DDD 780
    assert!(within_window(780, today));
    assert!(within_window(811, today));
    assert!(!within_window(812, today));
    assert!(within_window(779, today));
    assert!(!within_window(778, today));
    // Across the wrap: today 20_995, expiry 21_002 (DDD 002).
    assert!(within_window(2, 20_995));
    assert!(within_window(994, 20_995));
    assert!(!within_window(993, 20_995));
}

#[test]
fn srs_and_tag_detection() {
    assert!(is_srs("SRS0=HHH=TT=example.org=alice"));
    assert!(is_srs("srs1+x"));
    assert!(!is_srs("srs"));
    assert!(!is_srs("srsly"));
    assert!(looks_tagged("PRVS=1234abcdef=x"));
}

#[test]
fn quoted_round_trip() {
    let key = TagKey::new(b"k");
    let a = address::parse("\"john doe\"@example.com").unwrap();
    let s = sign(&key, 1, Scheme::Native, Syntax::Prefix, &a, 787).unwrap();
    assert!(s.starts_with("\"prvs=1787") && s.ends_with("=john doe\"@example.com"), "{s}");
    let v = verify(&s, 20_780, Schemes::ALL, |k| (k == 1).then_some(&key)).unwrap();
    match v {
        Verdict::Valid(c) => assert_eq!(c.original, "\"john doe\"@example.com"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_tags() {
    for s in [
        "prvs=@x.org",
        "prvs=x@x.org",
        "prvs==a@x.org",
        "prvs=123=a@x.org",
        "prvs=1787abcdef=@x.org",
        "prvs=a787abcdef=a@x.org",
        "prvs=1787abcdeg=a@x.org",
        "prvs=1787abcdefg1=a@x.org",
    ] {
        assert!(matches!(parse(s), Ok(Parsed::Malformed(_))), "{s}: {:?}", parse(s));
    }
}

#[test]
fn subaddress_tags_parse_to_the_mailbox_before_them() {
    let orig = |s: &str| match parse(s) {
        Ok(Parsed::Tagged(t)) => (t.scheme, t.key_id, t.day, t.original.into_owned()),
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(
        orig("alice+prvs=0795ee03a4@example.com"),
        (Scheme::Prvs, 0, 795, "alice@example.com".into())
    );
    assert_eq!(orig("a-b_c-prvs=3002abcdefgh@x.org"), (Scheme::Native, 3, 2, "a-b_c@x.org".into()));
    assert_eq!(orig("ALICE_PRVS=0795EE03A4@X.ORG").3, "ALICE@X.ORG");
    // The last tag is the tag; what is before it is the mailbox, extension and all.
    assert_eq!(orig("user+existing+prvs=07959143f3@example.com").3, "user+existing@example.com");
    assert_eq!(orig("a+prvs=0795ee03a4+prvs=0795ee03a4@x.org").3, "a+prvs=0795ee03a4@x.org");
    // Quoted local parts keep their quoting.
    assert_eq!(orig("\"john doe+prvs=0795ee03a4\"@x.org").3, "\"john doe\"@x.org");
    // The prefix form comes first when both are there.
    assert_eq!(orig("prvs=0795ee03a4=bob+prvs=0795ee03a4@x.org").3, "bob+prvs=0795ee03a4@x.org");
    for s in [
        "+prvs=0795ee03a4@x.org",
        "alice+prvs=@x.org",
        "alice+prvs=07@x.org",
        "alice+prvs=0795=e03a4@x.org",
        "alice+prvs=0795ee03a4x@x.org",
        "alice+prvs=a795ee03a4@x.org",
        "alice+prvs=0795ee03ag@x.org",
        "alice-prvs=junk@x.org",
    ] {
        assert!(matches!(parse(s), Ok(Parsed::Malformed(_))), "{s}: {:?}", parse(s));
        assert!(looks_tagged(&address::parse(s).unwrap().local), "{s}");
    }
    // Not a delimiter, or no tag at the end: an ordinary local part.
    for s in [
        "alice.prvs=0795ee03a4@x.org",
        "aliceprvs=0795ee03a4@x.org",
        "alice%prvs=0795ee03a4@x.org",
        "alice+prvs@x.org",
    ] {
        assert!(matches!(parse(s), Ok(Parsed::Untagged(_))), "{s}: {:?}", parse(s));
    }
}

#[test]
fn subaddress_signing() {
    let key = TagKey::new(b"a shared secret");
    let a = address::parse("jane.doe@example.org").unwrap();
    let prefix = sign(&key, 0, Scheme::Prvs, Syntax::Prefix, &a, 787).unwrap();
    assert_eq!(prefix, "prvs=0787b36d66=jane.doe@example.org");
    // The same hash, after the mailbox.
    for d in ['+', '-', '_'] {
        let s = sign(&key, 0, Scheme::Prvs, Syntax::Subaddress(d), &a, 787).unwrap();
        assert_eq!(s, format!("jane.doe{d}prvs=0787b36d66@example.org"));
    }
    let n = sign(&key, 0, Scheme::Native, Syntax::Subaddress('+'), &a, 787).unwrap();
    assert_eq!(n, "jane.doe+prvs=0787cuxbi73g@example.org");
    // A quoted local part is quoted with its tag.
    let q = address::parse("\"john doe\"@example.com").unwrap();
    let s = sign(&key, 1, Scheme::Native, Syntax::Subaddress('+'), &q, 787).unwrap();
    assert!(s.starts_with("\"john doe+prvs=1787") && s.ends_with("\"@example.com"), "{s}");
    assert!(verify(&s, 20_780, Schemes::ALL, |k| (k == 1).then_some(&key)).unwrap().is_valid());
    // Both forms add the same octets, so what is too long to sign is the same.
    assert_eq!(n.len() - a.local.len() - "@example.org".len(), Scheme::Native.overhead());
    // Only the delimiters verifiers recognise can be configured.
    assert!(Syntax::subaddress('+').is_ok());
    for c in ['%', '!', '.', '=', 'a', '@', ' '] {
        assert!(Syntax::subaddress(c).is_err(), "{c:?}");
    }
    // An address tagged either way is never signed again.
    for t in [prefix.as_str(), "jane+prvs=0787b36d66@example.org"] {
        assert_eq!(
            structural_skip(&address::parse(t).unwrap(), Scheme::Native),
            Some(Skip::AlreadyTagged)
        );
    }
}

#[test]
fn the_fast_path_takes_the_prefix_form_only() {
    // A prefix tag over a local part that holds a sub-address tag (no batv signer makes
    // one; another signer might), its `prvs=` replaced: no longer a prefix tag, so the
    // fast path must not verify the rest as one.
    let key = TagKey::new(b"a shared secret");
    let inner = address::parse("foo+prvs=0795ee03a4@x.org").unwrap();
    let signed = sign(&key, 0, Scheme::Prvs, Syntax::Prefix, &inner, 795).unwrap();
    let lookup = |k: u8| (k == 0).then_some(&key);
    assert!(verify(&signed, 20_790, Schemes::ALL, lookup).unwrap().is_valid());
    let disguised = format!("abcde{}", &signed[PREFIX.len()..]);
    let v = verify(&disguised, 20_790, Schemes::ALL, lookup).unwrap();
    assert_eq!(v, verify_general(&disguised, 20_790, Schemes::ALL, lookup).unwrap());
    assert!(!v.is_valid(), "{disguised}: {v:?}");
}
