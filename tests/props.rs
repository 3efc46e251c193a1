//! Property tests: round trips, single-character substitutions, and total parsing.

use batv::core::address;
use batv::core::tag::{self, Scheme, Syntax, TagKey, Verdict};
use proptest::prelude::*;

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![Just(Scheme::Native), Just(Scheme::Prvs)]
}

fn syntax() -> impl Strategy<Value = Syntax> {
    prop_oneof![
        Just(Syntax::Prefix),
        Just(Syntax::Subaddress('+')),
        Just(Syntax::Subaddress('-')),
        Just(Syntax::Subaddress('_')),
    ]
}

/// Where the tag's characters are in a signed address: `prvs=KDDDHASH=` at the start of
/// the local part, or `+prvs=KDDDHASH` at its end (after an opening quote, before the
/// closing one).
fn tag_span(signed: &str, scheme: Scheme, syntax: Syntax) -> std::ops::Range<usize> {
    let at = signed.rfind('@').unwrap();
    match syntax {
        Syntax::Prefix => {
            let start = usize::from(signed.starts_with('"'));
            start..start + scheme.overhead()
        }
        Syntax::Subaddress(_) => {
            let end = at - usize::from(signed[..at].ends_with('"'));
            end - scheme.overhead()..end
        }
    }
}

/// Local parts: dot-atoms (with UTF-8) and ones that need quoting.
fn local() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,2}",
        "[a-zà-ÿ]{1,8}",
        "[a-zA-Z0-9 \"\\\\@(),:;<>\\[\\]]{1,20}",
    ]
    .prop_filter("signable", |l| !tag::looks_tagged(l) && !tag::is_srs(l))
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(\\.[a-zA-Z]{2,6}){1,2}",
        "[a-zäöüß]{2,8}\\.example",
    ]
}

fn keys() -> Vec<TagKey> {
    (0..10u8).map(|i| TagKey::new(format!("secret number {i}").as_bytes())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_verify_round_trips(local in local(), domain in domain(), scheme in scheme(), syntax in syntax(),
                                   key_id in 0u8..10, today in 0i64..200_000, lifetime in 7u16..=30,
                                   checked_after in 0i64..=31) {
        let keys = keys();
        let addr_text = address::format(&local, &domain);
        let addr = address::parse(&addr_text).unwrap();
        prop_assume!(!tag::too_long_to_sign(&addr.local, scheme));
        let ddd = tag::day_stamp(today, lifetime);
        let signed = tag::sign(&keys[key_id as usize], key_id, scheme, syntax, &addr, ddd).unwrap();
        prop_assert!(tag::looks_tagged(&address::parse(&signed).unwrap().local), "{}", signed);
        prop_assert!(signed.split('@').next().is_some());
        prop_assert!(address::parse(&signed).is_ok(), "signed form must be a valid address: {}", signed);
        // Valid from signing through expiry (and a day either side), whatever the day.
        let day = today - 1 + checked_after.min(lifetime as i64 + 2);
        match tag::verify(&signed, day, tag::Schemes::ALL, |k| keys.get(k as usize)).unwrap() {
            Verdict::Valid(c) => {
                prop_assert_eq!(c.original.as_ref(), addr_text.as_str());
                prop_assert_eq!(c.key_id, key_id);
                prop_assert_eq!(c.scheme, scheme);
            }
            other => prop_assert!(false, "{} at day {}: {:?}", signed, day, other),
        }
        let stripped = tag::strip(&signed).unwrap();
        prop_assert_eq!(stripped.as_ref(), addr_text.as_str());
        // Two days past expiry it is expired, and still authentic.
        let late = today + lifetime as i64 + 2;
        let v = tag::verify(&signed, late, tag::Schemes::ALL, |k| keys.get(k as usize)).unwrap();
        prop_assert!(matches!(v, Verdict::Expired(_)), "{:?}", v);
        // A verifier without that key does not accept it.
        let v = tag::verify(&signed, today, tag::Schemes::ALL, |k| (k != key_id).then(|| &keys[k as usize])).unwrap();
        prop_assert_eq!(v, Verdict::UnknownKey(key_id));
        // The fast path (plain ASCII addresses) and the parser agree on every day, every
        // case and every key set.
        for text in [signed.clone(), signed.to_ascii_uppercase(), signed.replacen("prvs=", "PRVS=", 1)] {
            for d in [today - 1, day, late, today + 500] {
                let all = |k: u8| keys.get(k as usize);
                prop_assert_eq!(tag::verify(&text, d, tag::Schemes::ALL, all), tag::verify_general(&text, d, tag::Schemes::ALL, all), "{} on day {}", text, d);
                let none = |_: u8| None;
                prop_assert_eq!(tag::verify(&text, d, tag::Schemes::ALL, none), tag::verify_general(&text, d, tag::Schemes::ALL, none));
            }
        }
    }

    #[test]
    fn native_tags_ignore_ascii_case(local in "[a-zA-Z0-9._+-]{1,30}", domain in domain(), today in 0i64..200_000) {
        let keys = keys();
        let text = format!("{local}@{domain}");
        let addr = address::parse(&text).unwrap();
        for syntax in [Syntax::Prefix, Syntax::Subaddress('+')] {
        let signed = tag::sign(&keys[3], 3, Scheme::Native, syntax, &addr, tag::day_stamp(today, 7)).unwrap();
        for variant in [signed.to_ascii_uppercase(), signed.to_ascii_lowercase()] {
            let v = tag::verify(&variant, today, tag::Schemes::ALL, |k| keys.get(k as usize)).unwrap();
            prop_assert!(v.is_valid(), "{} -> {:?}", variant, v);
        }
        }
    }

    #[test]
    fn every_substitution_in_the_tag_is_rejected_except_case(local in local(), domain in domain(), scheme in scheme(),
                                                             syntax in syntax(), key_id in 0u8..10, today in 0i64..200_000) {
        let keys = keys();
        let addr_text = address::format(&local, &domain);
        let addr = address::parse(&addr_text).unwrap();
        prop_assume!(!tag::too_long_to_sign(&addr.local, scheme));
        let signed = tag::sign(&keys[key_id as usize], key_id, scheme, syntax, &addr, tag::day_stamp(today, 7)).unwrap();
        let span = tag_span(&signed, scheme, syntax);
        let chars: Vec<char> = signed.chars().collect();
        // The span is ASCII, and so is everything before it in the prefix syntax; in the
        // sub-address syntax count characters from the end.
        let offset = chars.len() - signed[span.start..].chars().count();
        let replacements: Vec<char> = (' '..='~').chain(['é', '\u{0}', '\t']).collect();
        for i in offset..offset + span.len() {
            for &c in &replacements {
                if c == chars[i] {
                    continue;
                }
                let mut v = chars.clone();
                v[i] = c;
                let s: String = v.into_iter().collect();
                let verdict = tag::verify(&s, today, tag::Schemes::ALL, |k| keys.get(k as usize));
                prop_assert_eq!(&verdict, &tag::verify_general(&s, today, tag::Schemes::ALL, |k| keys.get(k as usize)), "fast and general paths differ on {}", s);
                let valid = matches!(verdict, Ok(Verdict::Valid(_)));
                // The sub-address delimiter may be any of them: the tag authenticates
                // the mailbox before it, which is what the verifier gives back.
                let other_delimiter = i == offset && syntax != Syntax::Prefix && tag::SUBADDRESS_DELIMITERS.contains(c);
                if c.eq_ignore_ascii_case(&chars[i]) || other_delimiter {
                    match verdict {
                        Ok(Verdict::Valid(ch)) => prop_assert_eq!(ch.original.as_ref(), addr_text.as_str()),
                        other => prop_assert!(false, "case change must verify: {} -> {:?}", s, other),
                    }
                } else {
                    prop_assert!(!valid, "substitution accepted: {} (from {})", s, signed);
                }
            }
        }
    }

    /// A tag authenticates one address: never the mailbox with an extension added or
    /// taken away, another domain, or the other form's reading of the same characters.
    #[test]
    fn a_tag_is_for_its_address_only(local in "[a-z0-9.]{1,12}", ext in "[a-z0-9]{1,8}", domain in domain(),
                                     scheme in scheme(), d in prop_oneof![Just('+'), Just('-'), Just('_')],
                                     today in 0i64..200_000) {
        prop_assume!(!local.starts_with('.') && !local.ends_with('.') && !local.contains(".."));
        let keys = keys();
        let lookup = |k: u8| keys.get(k as usize);
        let ddd = tag::day_stamp(today, 7);
        let sign = |l: &str, syntax| tag::sign(&keys[1], 1, scheme, syntax, &address::parse(&format!("{l}@{domain}")).unwrap(), ddd).unwrap();
        let valid_for = |s: &str| match tag::verify(s, today, tag::Schemes::ALL, lookup) {
            Ok(Verdict::Valid(c)) => Some(c.original.into_owned()),
            _ => None,
        };
        let mailbox = format!("{local}@{domain}");
        let extended = format!("{local}{d}{ext}@{domain}");
        // alice+prvs=T(alice): valid for alice only; moved behind an extension it is not.
        let tagged = sign(&local, Syntax::Subaddress(d));
        prop_assert_eq!(valid_for(&tagged), Some(mailbox.clone()));
        let moved = tagged.replacen(&format!("{local}{d}"), &format!("{local}{d}{ext}{d}"), 1);
        prop_assert_eq!(valid_for(&moved), None, "{}", moved);
        // alice+news+prvs=T(alice+news): valid for alice+news; without the extension not.
        let tagged_ext = sign(&format!("{local}{d}{ext}"), Syntax::Subaddress(d));
        prop_assert_eq!(valid_for(&tagged_ext), Some(extended.clone()));
        let cut = tagged_ext.replacen(&format!("{d}{ext}{d}"), &d.to_string(), 1);
        prop_assert_eq!(valid_for(&cut), None, "{}", cut);
        // The same tag value in the other syntax names the same address, or none.
        let prefix = sign(&local, Syntax::Prefix);
        let value = &prefix[5..prefix.find('=').unwrap() + 1 + scheme.overhead() - 6];
        let crossed = format!("{local}{d}prvs={value}@{domain}");
        prop_assert_eq!(valid_for(&crossed), Some(mailbox.clone()), "{}", crossed);
        let crossed_ext = format!("prvs={value}={local}{d}{ext}@{domain}");
        prop_assert_eq!(valid_for(&crossed_ext), None, "{}", crossed_ext);
        // Another domain.
        let elsewhere = tagged.replacen(&format!("@{domain}"), "@elsewhere.example", 1);
        prop_assert_eq!(valid_for(&elsewhere), None, "{}", elsewhere);
        // Stripping recovers the original in either form, without a key.
        prop_assert_eq!(tag::strip(&tagged).unwrap().into_owned(), mailbox);
        prop_assert_eq!(tag::strip(&tagged_ext).unwrap().into_owned(), extended);
    }

    #[test]
    fn parsing_is_total(s in "\\PC{0,80}", bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let keys = keys();
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        let inputs = [s.clone(), lossy, format!("prvs={s}"), format!("\"prvs={s}\"@x.org"), format!("prvs=1787{s}=a@b.c"),
                      format!("a+prvs={s}"), format!("a+prvs=1787{s}@b.c"), format!("\"a b-prvs={s}\"@x.org"), format!("{s}_prvs=1787abcdef@b.c")];
        for input in inputs.iter().map(String::as_str) {
            let _ = address::parse(input);
            let _ = tag::parse(input);
            let _ = tag::strip(input);
            let v = tag::verify(input, 20_780, tag::Schemes::ALL, |k| keys.get(k as usize));
            prop_assert_eq!(&v, &tag::verify_general(input, 20_780, tag::Schemes::ALL, |k| keys.get(k as usize)), "fast and general paths differ on {:?}", input);
            // Nothing random is a valid tag.
            prop_assert!(!matches!(v, Ok(Verdict::Valid(_))), "{:?}", input);
        }
    }
}

/// Comments and white space as Postfix's parser drops them: `(nested (comments))`, spaces
/// and tabs.
fn cfws() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        Just("\t ".to_string()),
        "\\([a-z =@<>]{0,6}\\)",
        "\\([a-z]{0,3}\\([a-z]{0,3}\\)\\)",
        Just("(a\\)b\\(c)".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The normaliser is total, its addresses parse, and it is idempotent: what it hands
    /// on normalises to itself, so what batv judges and what the MTA gets are one address.
    #[test]
    fn normalised_paths_are_fixed_points(s in "[ a-z.@\"()\\\\,:\\[\\]\t]{0,30}", bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        for input in [s.as_str(), lossy.as_str()] {
            match address::normalize_path(input) {
                Ok(address::Path::Address(a)) => {
                    prop_assert!(address::parse(&a).is_ok(), "{:?} -> {:?}", input, a);
                    prop_assert!(!a.contains(['(', '\t']) || a.contains('"'), "{:?} -> {:?}", input, a);
                    prop_assert_eq!(address::normalize_path(&a), Ok(address::Path::Address(a.clone())), "{:?}", input);
                    prop_assert!(!a.ends_with('.'), "{:?} -> {:?}", input, a);
                }
                Ok(address::Path::Bare(b)) => {
                    prop_assert!(!b.is_empty() && !b.contains('@') || b.starts_with('"'), "{:?} -> {:?}", input, b);
                    prop_assert_eq!(address::normalize_path(&b), Ok(address::Path::Bare(b.clone())), "{:?}", input);
                }
                Ok(address::Path::Null) | Err(_) => {}
            }
        }
    }

    /// Comments and white space around the words, a source route and trailing dots all
    /// come off: the address judged is the one without them, whatever the spelling.
    #[test]
    fn spellings_of_one_address_normalise_to_it(local in "[a-z0-9+_-]{1,10}(\\.[a-z0-9]{1,5}){0,2}", domain in domain(),
                                                 a in cfws(), b in cfws(), c in cfws(), d in cfws(),
                                                 dots in 0usize..3, route in proptest::bool::ANY) {
        let plain = format!("{local}@{domain}");
        let spelled = format!(
            "{a}{}{local}{b}@{c}{domain}{}{d}",
            if route { "@relay.example,@b.example:" } else { "" },
            ".".repeat(dots)
        );
        prop_assert_eq!(
            address::normalize_path(&spelled).map(|p| p.as_str().to_string()),
            Ok(plain.clone()),
            "{:?}", spelled
        );
        // Inside the local part, white space between words is ambiguous: refused.
        let split = format!("{local} x@{domain}");
        prop_assert!(address::normalize_path(&split).is_err(), "{:?}", split);
        // Every spelling of nothing is the null path.
        for nothing in [format!("{a}{b}"), format!("{a}\"\"{b}")] {
            prop_assert_eq!(address::normalize_path(&nothing), Ok(address::Path::Null), "{:?}", nothing);
        }
    }
}
