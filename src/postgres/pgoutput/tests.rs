//! Decoder tests over a test-side encoder of pgoutput messages: every message
//! kind, the errors, and never panicking on random or mutated input.

use super::*;

/// Test-side encoder of pgoutput messages.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn tag(t: u8) -> Self {
        Enc(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    /// `None` = null, `Some(None)` = unchanged toast, `Some(Some(v))` = text.
    fn tuple(mut self, cols: &[Option<Option<&str>>]) -> Self {
        self = self.u16(cols.len() as u16);
        for c in cols {
            self = match c {
                None => self.u8(b'n'),
                Some(None) => self.u8(b'u'),
                Some(Some(v)) => {
                    let mut e = self.u8(b't').i32(v.len() as i32);
                    e.0.extend_from_slice(v.as_bytes());
                    e
                }
            };
        }
        self
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn samples() -> Vec<Bytes> {
    vec![
        Enc::tag(b'B')
            .u64(0x16B_3748)
            .i64(768_000_000_123_456)
            .u32(742)
            .bytes(),
        Enc::tag(b'C')
            .u8(0)
            .u64(0x16B_3748)
            .u64(0x16B_3780)
            .i64(1)
            .bytes(),
        Enc::tag(b'O').u64(7).str("origin_a").bytes(),
        Enc::tag(b'R')
            .u32(16_384)
            .str("public")
            .str("items")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .str("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .str("name")
            .u32(1043)
            .i32(68)
            .bytes(),
        Enc::tag(b'Y').u32(70_000).str("public").str("mood").bytes(),
        Enc::tag(b'I')
            .u32(16_384)
            .u8(b'N')
            .tuple(&[Some(Some("42")), None, Some(None), Some(Some("héllo"))])
            .bytes(),
        Enc::tag(b'U')
            .u32(16_384)
            .u8(b'K')
            .tuple(&[Some(Some("41")), None])
            .u8(b'N')
            .tuple(&[Some(Some("42")), Some(Some("x"))])
            .bytes(),
        Enc::tag(b'U')
            .u32(16_384)
            .u8(b'N')
            .tuple(&[Some(Some("42")), Some(None)])
            .bytes(),
        Enc::tag(b'D')
            .u32(16_384)
            .u8(b'O')
            .tuple(&[Some(Some("42")), Some(Some(""))])
            .bytes(),
        Enc::tag(b'T').u32(2).u8(3).u32(1).u32(2).bytes(),
        Enc::tag(b'M')
            .u8(1)
            .u64(99)
            .str("sluice")
            .i32(5)
            .u8(b'h')
            .u8(b'e')
            .u8(b'l')
            .u8(b'l')
            .u8(b'o')
            .bytes(),
    ]
}

#[test]
fn decodes_begin_and_commit() {
    let s = samples();
    match decode(&s[0]).unwrap() {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            assert_eq!(final_lsn, Lsn(0x16B_3748));
            assert_eq!(commit_time, 768_000_000_123_456);
            assert_eq!(xid, 742);
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[1]).unwrap() {
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            assert_eq!(
                (flags, commit_lsn, end_lsn),
                (0, Lsn(0x16B_3748), Lsn(0x16B_3780))
            );
            assert_eq!(commit_time, 1);
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[2]).unwrap() {
        Message::Origin { commit_lsn, name } => {
            assert_eq!((commit_lsn, name.as_str()), (Lsn(7), "origin_a"));
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn decodes_relation_and_type() {
    let s = samples();
    let Message::Relation(rel) = decode(&s[3]).unwrap() else {
        panic!()
    };
    assert_eq!(
        rel,
        Relation {
            id: 16_384,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                    is_key: true
                },
                RelationColumn {
                    name: "name".into(),
                    type_oid: 1043,
                    type_modifier: 68,
                    is_key: false
                },
            ],
        }
    );
    match decode(&s[4]).unwrap() {
        Message::Type {
            id,
            namespace,
            name,
        } => assert_eq!(
            (id, namespace.as_str(), name.as_str()),
            (70_000, "public", "mood")
        ),
        m => panic!("{m:?}"),
    }
}

#[test]
fn decodes_insert_zero_copy() {
    let s = samples();
    let Message::Insert { relation_id, new } = decode(&s[5]).unwrap() else {
        panic!()
    };
    assert_eq!(relation_id, 16_384);
    assert_eq!(new.len(), 4);
    assert!(!new.is_empty());
    assert_eq!(new.kind(0), ColumnKind::Text);
    assert_eq!(new.value(0), Some(&b"42"[..]));
    assert_eq!(new.kind(1), ColumnKind::Null);
    assert_eq!(new.value(1), None);
    assert_eq!(new.kind(2), ColumnKind::Unchanged);
    assert_eq!(new.value(2), None);
    assert_eq!(new.value(3), Some("héllo".as_bytes()));
    assert_eq!(new.value_bytes(3).unwrap(), "héllo".as_bytes());
    assert_eq!(new.kind(4), ColumnKind::Null);
    assert_eq!(new.value(4), None);
    // The tuple points into the payload.
    let payload = s[5].as_ptr_range();
    assert!(payload.contains(&new.data.as_ptr()));
}

#[test]
fn decodes_update_delete_truncate_message() {
    let s = samples();
    match decode(&s[6]).unwrap() {
        Message::Update {
            relation_id: 16_384,
            old: Some(OldTuple::Key(old)),
            new,
        } => {
            assert_eq!(old.value(0), Some(&b"41"[..]));
            assert_eq!(old.kind(1), ColumnKind::Null);
            assert_eq!(new.value(1), Some(&b"x"[..]));
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[7]).unwrap() {
        Message::Update { old: None, new, .. } => {
            assert_eq!(new.kind(1), ColumnKind::Unchanged)
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[8]).unwrap() {
        Message::Delete {
            old: OldTuple::Full(old),
            ..
        } => {
            assert_eq!(old.value(1), Some(&b""[..]));
            assert_eq!(old.kind(1), ColumnKind::Text);
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[9]).unwrap() {
        Message::Truncate {
            relation_ids,
            cascade,
            restart_identity,
        } => {
            assert_eq!(relation_ids, vec![1, 2]);
            assert!(cascade && restart_identity);
        }
        m => panic!("{m:?}"),
    }
    match decode(&s[10]).unwrap() {
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            assert!(transactional);
            assert_eq!((lsn, prefix.as_str()), (Lsn(99), "sluice"));
            assert_eq!(&content[..], b"hello");
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn errors_name_tag_and_offset() {
    let err = decode(&Bytes::new()).unwrap_err();
    assert!(matches!(err, DecodeError::Empty));

    let err = decode(&Bytes::from_static(b"Z")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown pgoutput message tag 'Z' at byte 0"
    );

    let err = decode(&Bytes::from_static(b"S\0\0\0\x01\x01")).unwrap_err();
    assert!(matches!(err, DecodeError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("Stream Start ('S')"), "{err}");
    let err = decode(&Bytes::from_static(b"P")).unwrap_err();
    assert!(err.to_string().contains("two-phase"), "{err}");

    let err = decode(&Bytes::from_static(b"B\0\0\0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Begin ('B') message truncated at byte 1: final LSN needs 8 bytes, 3 left"
    );
    assert_eq!(err.tag(), Some(Tag(b'B')));

    // Bad column kind at byte 8 (tag, relid 4, 'N', count 2).
    let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
    let err = decode(&bad).unwrap_err();
    assert!(
        matches!(err, DecodeError::BadColumnKind { offset: 8, .. }),
        "{err}"
    );
    assert_eq!(err.offset(), 8);

    // Value length larger than what is left.
    let bad = Enc::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .i32(100)
        .u8(b'a');
    let err = decode(&bad.bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::BadLength {
                offset: 9,
                value: 100,
                ..
            }
        ),
        "{err}"
    );
    let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1);
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::BadLength { value: -1, .. })
    ));

    // Column count larger than what is left.
    let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).u8(b'n');
    let err = decode(&bad.bytes()).unwrap_err();
    assert!(
        matches!(err, DecodeError::BadLength { offset: 6, .. }),
        "{err}"
    );
    let bad = Enc::tag(b'T').u32(u32::MAX).u8(0).u32(1);
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::BadLength { .. })
    ));

    // Wrong markers.
    let bad = Enc::tag(b'I').u32(1).u8(b'K').u16(0);
    let err = decode(&bad.bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                offset: 5,
                found: Byte(b'K'),
                ..
            }
        ),
        "{err}"
    );
    let bad = Enc::tag(b'D').u32(1).u8(b'N').u16(0);
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::UnexpectedByte { .. })
    ));
    let bad = Enc::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'K').u16(0);
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::UnexpectedByte { offset: 8, .. })
    ));

    // Strings.
    let bad = Enc::tag(b'O').u64(1).u8(b'a');
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::UnterminatedString { offset: 9, .. })
    ));
    let bad = Enc::tag(b'O').u64(1).u8(0xff).u8(0);
    let err = decode(&bad.bytes()).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidUtf8 { offset: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("origin name"), "{err}");

    // Bad replica identity, trailing bytes.
    let bad = Enc::tag(b'R').u32(1).str("").str("t").u8(b'x').u16(0);
    assert!(matches!(
        decode(&bad.bytes()),
        Err(DecodeError::UnexpectedByte { offset: 8, .. })
    ));
    let bad = Enc::tag(b'I').u32(1).u8(b'N').u16(0).u8(0);
    let err = decode(&bad.bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TrailingBytes {
                offset: 8,
                remaining: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_strict_prefix_is_an_error() {
    for msg in samples() {
        decode(&msg).unwrap();
        for n in 0..msg.len() {
            assert!(decode(&msg.slice(..n)).is_err(), "prefix {n} of {msg:?}");
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn never_panics_on_random_or_mutated_input() {
    let seed = 0x5EED_1234_ABCD_0001;
    println!("seed {seed:#x}");
    let mut rng = XorShift(seed);
    let tags = b"BCORYIUDTMSEcAbPKrpZ";
    for _ in 0..20_000 {
        let len = (rng.next() % 48) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(first) = buf.first_mut() {
            *first = tags[(rng.next() % tags.len() as u64) as usize];
        }
        let _ = decode(&Bytes::from(buf));
    }
    let samples = samples();
    for _ in 0..50_000 {
        let base = &samples[(rng.next() % samples.len() as u64) as usize];
        let mut buf = base.to_vec();
        for _ in 0..1 + rng.next() % 3 {
            let i = (rng.next() % buf.len() as u64) as usize;
            buf[i] = match rng.next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        if rng.next().is_multiple_of(4) {
            buf.truncate((rng.next() % buf.len() as u64) as usize);
        }
        if let Ok(Message::Insert { new, .. }) = decode(&Bytes::from(buf)) {
            for i in 0..new.len() + 1 {
                let _ = (new.kind(i), new.value(i), new.value_bytes(i));
            }
        }
    }
}
