//! A corpus of hostile bundles, each breaking one rule of the reader once.
//!
//! Two kinds of attacker are modelled. Most cases keep a genuine signed manifest
//! and swap the payload for a forged one of the same length (what anyone who can
//! alter a bundle in transit can do). Cases marked "signed" are signed by the
//! trusted key itself, as if the signing pipeline were compromised: the reader's
//! checks must hold even then.

use std::path::Path;

use hangar_bundle::SigningKey;
use hangar_bundle::manifest::Entry;

use super::{
    Frame, Meta, Tar, assemble, dir_entry, file_entry, key, manifest, noise, offsets, typeflag,
    zstd, zstd_level,
};

/// One hostile bundle and how the reader must refuse it.
pub struct Case {
    pub name: &'static str,
    pub bundle: Vec<u8>,
    /// `BundleError::code()` of the expected error.
    pub code: &'static str,
    /// The entry the error must name, if it is about one.
    pub entry: Option<String>,
    /// The version installed on the host, for the downgrade case.
    pub installed: Option<&'static str>,
}

/// The key the tests trust.
pub fn trusted_key() -> SigningKey {
    key(1)
}

/// A key nobody trusts.
pub fn stranger_key() -> SigningKey {
    key(2)
}

/// The honest content: (path, mode, data), directories with no data.
pub fn sample(tool: &[u8]) -> Vec<(&'static str, u32, Option<Vec<u8>>)> {
    vec![
        ("bin", 0o755, None),
        ("bin/tool", 0o755, Some(tool.to_vec())),
        ("etc", 0o755, None),
        ("etc/config.toml", 0o644, Some(b"answer = 42\n".to_vec())),
        ("lib", 0o755, None),
        ("lib/libx.so", 0o644, Some(noise(2, 1000))),
        ("data", 0o755, None),
        // Incompressible, so forged payloads fit in the genuine one's length.
        ("data/blob", 0o644, Some(noise(3, 64 << 10))),
        // Text that a fast zstd level compresses worse than a slow one: the room
        // that lets forged payloads fit in the genuine payload's length.
        ("share", 0o755, None),
        ("share/words.txt", 0o644, Some(words(64 << 10))),
    ]
}

/// Pseudo-random words from a small vocabulary.
pub fn words(len: usize) -> Vec<u8> {
    const VOCABULARY: [&str; 16] = [
        "hangar", "bundle", "signed", "offline", "worker", "stack", "plan", "apply", "state",
        "provider", "module", "release", "manifest", "payload", "entry", "staging",
    ];
    let mut out = Vec::with_capacity(len + 16);
    for (i, b) in noise(4, len).iter().enumerate() {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(VOCABULARY[usize::from(*b) % 16].as_bytes());
        out.push(if i % 12 == 11 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

pub fn tool_v1() -> Vec<u8> {
    let mut t = b"#!/bin/sh\necho tool 1.0\n".to_vec();
    t.extend(noise(1, 4096));
    t
}

pub fn tool_v09() -> Vec<u8> {
    let mut t = b"#!/bin/sh\necho tool 0.9\n".to_vec();
    t.extend(noise(9, 4096));
    t
}

pub fn entries_of(members: &[(&str, u32, Option<Vec<u8>>)]) -> Vec<Entry> {
    members
        .iter()
        .map(|(path, mode, data)| match data {
            None => dir_entry(path),
            Some(d) => file_entry(path, *mode, d),
        })
        .collect()
}

pub fn tar_of(members: &[(&str, u32, Option<Vec<u8>>)]) -> Tar {
    let mut tar = Tar::new();
    for (path, mode, data) in members {
        match data {
            None => tar.dir(path, *mode),
            Some(d) => tar.file(path, *mode, d),
        };
    }
    tar
}

/// A genuine bundle of `members`, signed by `signers`.
pub fn genuine(
    meta: &Meta,
    members: &[(&str, u32, Option<Vec<u8>>)],
    signers: &[&SigningKey],
) -> Vec<u8> {
    // A fast level, so forged payloads (written at a high level) fit in its length.
    let payload = zstd_level(&tar_of(members).end(), 1);
    let m = manifest(meta, entries_of(members), &payload);
    assemble(&m.to_bytes(), signers, &payload)
}

/// A bundle signed by `signer` whose manifest lists `entries` and matches `payload`.
pub fn signed(meta: &Meta, entries: Vec<Entry>, payload: &[u8], signer: &SigningKey) -> Vec<u8> {
    let m = manifest(meta, entries, payload);
    assemble(&m.to_bytes(), &[signer], payload)
}

/// `bundle` with its payload replaced by `payload`, padded to the same length:
/// the manifest and signatures stay genuine.
pub fn swap_payload(bundle: &[u8], payload: &[u8]) -> Vec<u8> {
    let (_, _, payload_at) = offsets(bundle);
    let room = bundle.len() - payload_at;
    assert!(
        payload.len() <= room,
        "forged payload of {} bytes > {room}",
        payload.len()
    );
    let mut out = bundle[..payload_at].to_vec();
    out.extend_from_slice(payload);
    out.resize(bundle.len(), 0);
    out
}

/// Every hostile case. `outside` is a directory links may try to reach.
pub fn hostile(outside: &Path) -> Vec<Case> {
    let trusted = trusted_key();
    let stranger = stranger_key();
    let meta = Meta::default();
    let members = sample(&tool_v1());
    let genuine_a = genuine(&meta, &members, &[&trusted]);
    let (manifest_at, signatures_at, payload_at) = offsets(&genuine_a);
    let outside_abs = outside.display().to_string();
    let entry = |e: &str| Some(e.to_owned());
    let mut cases = Vec::new();
    let mut case = |name, bundle, code, entry: Option<String>| {
        cases.push(Case {
            name,
            bundle,
            code,
            entry,
            installed: None,
        });
    };

    // ---- the file, its manifest and signatures ----
    let mut b = genuine_a.clone();
    b[signatures_at + 8 + 10] ^= 0x01;
    case("bad signature", b, "bad_signature", None);

    case(
        "unknown key",
        genuine(&meta, &members, &[&stranger]),
        "untrusted_signers",
        None,
    );

    case("unsigned", genuine(&meta, &members, &[]), "unsigned", None);

    let mut b = genuine_a.clone();
    let text = String::from_utf8(b[manifest_at..signatures_at].to_vec()).unwrap();
    let at = text.find("\"version\":\"1.0.0\"").unwrap() + "\"version\":\"1.0.".len();
    b[manifest_at + at] = b'1';
    case("tampered manifest", b, "bad_signature", None);

    let b = genuine_a[..payload_at + (genuine_a.len() - payload_at) / 2].to_vec();
    case("truncated file", b, "truncated", None);

    let mut b = genuine_a.clone();
    b.extend_from_slice(b"more");
    case("trailing bytes", b, "trailing_bytes", None);

    // Lengths in the header that do not match the file: the "key ids" read
    // would be bytes of the manifest or of the payload, never worth naming.
    let manifest_len = (signatures_at - manifest_at) as u32;
    for (name, len) in [
        ("manifest length too short", manifest_len - 40),
        ("manifest length too long", manifest_len + 72),
    ] {
        let mut b = genuine_a.clone();
        b[12..16].copy_from_slice(&len.to_le_bytes());
        case(name, b, "corrupt_header", None);
    }
    for (name, count) in [
        ("signature count too high", 2u32),
        ("signature count zero", 0),
    ] {
        let mut b = genuine_a.clone();
        b[16..20].copy_from_slice(&count.to_le_bytes());
        case(name, b, "corrupt_header", None);
    }
    // The signature record moved after the payload.
    let mut b = genuine_a[..signatures_at].to_vec();
    b.extend_from_slice(&genuine_a[payload_at..]);
    b.extend_from_slice(&genuine_a[signatures_at..payload_at]);
    case("signature after the payload", b, "corrupt_header", None);

    let mut b = genuine_a.clone();
    b[..8].copy_from_slice(b"NOTABNDL");
    case("bad magic", b, "not_a_bundle", None);

    let mut b = genuine_a.clone();
    b[8] = 2;
    case("unknown format version", b, "unsupported_format", None);

    // ---- forged payloads under a genuine signed manifest ----
    let mut tampered = tool_v1();
    tampered[100] ^= 0x20;
    let mut forged = members.clone();
    forged[1].2 = Some(tampered);
    case(
        "tampered payload byte",
        swap_payload(&genuine_a, &zstd(&tar_of(&forged).end())),
        "hash_mismatch",
        entry("bin/tool"),
    );

    // The genuine compressed payload with one byte flipped where zstd stores the
    // incompressible blob verbatim: the blob decompresses wrong.
    let mut b = genuine_a.clone();
    let needle = &noise(3, 64 << 10)[1000..1032];
    let at = payload_at + find(&b[payload_at..], needle).expect("blob stored verbatim");
    b[at] ^= 0x01;
    case(
        "tampered compressed byte",
        b,
        "hash_mismatch",
        entry("data/blob"),
    );

    // A file from another genuinely signed bundle (an older, vulnerable tool).
    let older = Meta {
        version: "0.9.0",
        ..Meta::default()
    };
    let genuine_b = genuine(&older, &sample(&tool_v09()), &[&trusted]);
    let (_, _, b_payload_at) = offsets(&genuine_b);
    let b_tar = zstd::decode_all(&genuine_b[b_payload_at..]).unwrap();
    let tool_b = extract_member(&b_tar, "bin/tool");
    let mut mixed = members.clone();
    mixed[1].2 = Some(tool_b);
    case(
        "file taken from another signed bundle",
        swap_payload(&genuine_a, &zstd(&tar_of(&mixed).end())),
        "hash_mismatch",
        entry("bin/tool"),
    );
    // Cut to length if need be: the refusal comes long before the end.
    let room = genuine_a.len() - payload_at;
    let other = &genuine_b[b_payload_at..];
    case(
        "payload of another signed bundle",
        swap_payload(&genuine_a, &other[..other.len().min(room)]),
        "hash_mismatch",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..2]);
    t.file("bin/evil", 0o755, b"#!/bin/sh\nrm -rf /\n");
    case(
        "extra entry",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_in_manifest",
        entry("bin/evil"),
    );

    let mut t = tar_of(&members[..1]);
    t.dir("etc", 0o755);
    case(
        "missing entry",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "missing_entry",
        entry("bin/tool"),
    );

    let t = tar_of(&members[..6]).end();
    case(
        "archive ends early",
        swap_payload(&genuine_a, &zstd(&t)),
        "missing_entry",
        entry("data"),
    );

    let mut t = Tar::new();
    t.file("../evil", 0o644, b"x");
    case(
        "dot-dot entry",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "unsafe_path",
        entry("../evil"),
    );

    let mut t = tar_of(&members[..1]);
    t.file("bin/../../evil", 0o644, b"x");
    case(
        "dot-dot inside a path",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "unsafe_path",
        entry("bin/../../evil"),
    );

    let evil_abs = format!("{outside_abs}/evil");
    let mut t = Tar::new();
    t.file(&evil_abs, 0o644, b"x");
    case(
        "absolute path",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "unsafe_path",
        entry(&evil_abs),
    );

    let mut t = tar_of(&members[..1]);
    t.link("bin/tool", typeflag::SYMLINK, &outside_abs);
    case(
        "symlink escaping",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("bin/tool"),
    );

    // `lib` as a link out of the target, then a file written through it.
    let mut t = tar_of(&members[..4]);
    t.link("lib", typeflag::SYMLINK, "../../outside");
    t.file("lib/libx.so", 0o644, &noise(2, 1000));
    case(
        "symlink then an entry through it",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("lib"),
    );

    let mut t = tar_of(&members[..1]);
    t.link(
        "bin/tool",
        typeflag::HARD_LINK,
        &format!("{outside_abs}/secret"),
    );
    case(
        "hard link escaping",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.member(b"bin/tool", typeflag::CHAR_DEVICE, 0o666, 0, b"", b"");
    case(
        "device file",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.member(b"bin/tool", typeflag::BLOCK_DEVICE, 0o666, 0, b"", b"");
    case(
        "block device",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.member(b"bin/tool", typeflag::FIFO, 0o666, 0, b"", b"");
    case(
        "fifo",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..2]);
    t.file("bin/tool", 0o755, &tool_v1());
    case(
        "duplicate path",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "duplicate_entry",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.file(
        "bin/tool",
        0o755,
        &[tool_v1(), b"and more".to_vec()].concat(),
    );
    case(
        "size lie",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "size_mismatch",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    let tool = tool_v1();
    t.pax(&[("size", &(tool.len() + 512).to_string())]);
    t.file("bin/tool", 0o755, &tool);
    case(
        "PAX size disagrees with ustar size",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "pax_size_mismatch",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.pax(&[("linkpath", "/etc/passwd")]);
    t.file("bin/tool", 0o755, &tool_v1());
    case(
        "PAX linkpath",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "bad_extended_header",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.pax(&[("path", "../evil")]);
    t.file("bin/tool", 0o755, &tool_v1());
    case(
        "PAX path escaping",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "unsafe_path",
        entry("../evil"),
    );

    let mut t = tar_of(&members[..1]);
    t.long_name("bin/../../../evil");
    t.file("bin/tool", 0o755, &tool_v1());
    case(
        "GNU long name escaping",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "unsafe_path",
        entry("bin/../../../evil"),
    );

    let mut t = tar_of(&members[..1]);
    t.member(
        b"PaxHeaders/global",
        typeflag::PAX_GLOBAL,
        0o644,
        0,
        b"",
        b"",
    );
    case(
        "PAX global header",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "not_regular_file",
        entry("PaxHeaders/global"),
    );

    // The archive stops half-way through a file's data.
    let full = tar_of(&members[..2]).end();
    let cut = &full[..512 + 512 + 2000];
    case(
        "truncated entry",
        swap_payload(&genuine_a, &zstd(cut)),
        "truncated_entry",
        entry("bin/tool"),
    );

    let mut t = tar_of(&members[..1]);
    t.dir("bin/tool", 0o755);
    case(
        "directory where a file is listed",
        swap_payload(&genuine_a, &zstd(&t.end())),
        "type_mismatch",
        entry("bin/tool"),
    );

    let mut frame = Frame::new(31);
    frame.raw(&tar_of(&members[..2]).end());
    case(
        "oversized zstd window",
        swap_payload(&genuine_a, &frame.finish()),
        "zstd_window",
        None,
    );

    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend(zstd(&tar_of(&members).end()));
    skippable.truncate(genuine_a.len() - payload_at);
    case(
        "skippable frame first",
        swap_payload(&genuine_a, &skippable),
        "bad_compression",
        None,
    );

    // Every entry genuine, then something after the end-of-archive blocks.
    let mut t = tar_of(&members).end();
    t.extend_from_slice(b"hidden");
    let payload = zstd(&t);
    case(
        "data after the archive",
        swap_payload(&genuine_a, &payload),
        "trailing_data",
        None,
    );

    // Same entries and content, a different header field: only the payload hash can tell.
    let mut t = tar_of(&members).end();
    t[136] = b'2';
    let sum = checksum(&t[..512]);
    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    case(
        "payload altered outside any file",
        swap_payload(&genuine_a, &zstd(&t)),
        "payload_hash_mismatch",
        None,
    );

    // ---- signed by the trusted key itself ----
    let small = &members[..4];
    let mut frame = Frame::new(20);
    frame.raw(&tar_of(small).end());
    frame.rle(0, 8 << 30);
    let bomb = frame.finish();
    case(
        "zstd bomb (signed)",
        signed(&meta, entries_of(small), &bomb, &trusted),
        "decompressed_too_large",
        None,
    );

    let mut frame = Frame::new(20);
    frame.raw(&Tar::new().dir("bin", 0o755).bytes);
    frame.rle(0, 4 << 30);
    let payload = frame.finish();
    let huge = vec![
        dir_entry("bin"),
        Entry::File {
            path: "bin/zeros".into(),
            mode: hangar_bundle::manifest::Mode(0o644),
            size: 4 << 30,
            sha256: hangar_bundle::manifest::Sha256([0; 32]),
        },
    ];
    case(
        "zstd bomb by ratio (signed)",
        signed(&meta, huge, &payload, &trusted),
        "compression_ratio",
        None,
    );

    let payload = zstd(&tar_of(small).end());
    let mut entries = entries_of(small);
    entries.push(file_entry("../evil", 0o644, b"x"));
    case(
        "manifest lists ../ (signed)",
        signed(&meta, entries, &payload, &trusted),
        "unsafe_path",
        entry("../evil"),
    );

    let mut entries = entries_of(small);
    entries.push(file_entry("/etc/evil", 0o644, b"x"));
    case(
        "manifest lists an absolute path (signed)",
        signed(&meta, entries, &payload, &trusted),
        "unsafe_path",
        entry("/etc/evil"),
    );

    let mut entries = entries_of(small);
    entries.push(file_entry("bin/tool", 0o755, b"x"));
    case(
        "manifest lists a path twice (signed)",
        signed(&meta, entries, &payload, &trusted),
        "duplicate_entry",
        entry("bin/tool"),
    );

    let mut entries = entries_of(small);
    entries.push(file_entry("bin/su", 0o4755, b"x"));
    case(
        "setuid mode (signed)",
        signed(&meta, entries, &payload, &trusted),
        "manifest_entry",
        entry("bin/su"),
    );

    // Unpacked by root, a file or directory others can write is theirs to replace.
    for (name, entry, mode) in [
        ("world-writable file (signed)", "bin/open", 0o777),
        ("group-writable file (signed)", "bin/shared", 0o775),
        ("others-writable data file (signed)", "bin/notes", 0o646),
    ] {
        let mut entries = entries_of(small);
        entries.push(file_entry(entry, mode, b"x"));
        case(
            name,
            signed(&meta, entries, &payload, &trusted),
            "manifest_entry",
            Some(entry.to_owned()),
        );
    }
    for (name, entry, mode) in [
        ("world-writable directory (signed)", "open", 0o777),
        ("group-writable directory (signed)", "shared", 0o775),
    ] {
        let mut entries = entries_of(small);
        entries.push(Entry::Dir {
            path: entry.into(),
            mode: hangar_bundle::manifest::Mode(mode),
        });
        case(
            name,
            signed(&meta, entries, &payload, &trusted),
            "manifest_entry",
            Some(entry.to_owned()),
        );
    }

    let mut entries = entries_of(small);
    entries.push(file_entry("nodir/file", 0o644, b"x"));
    case(
        "entry without its directory (signed)",
        signed(&meta, entries, &payload, &trusted),
        "manifest_entry",
        entry("nodir/file"),
    );

    // ---- policy ----
    let payload = zstd(&tar_of(&members).end());
    cases.push(Case {
        name: "downgrade",
        bundle: signed(&older, entries_of(&members), &payload, &trusted),
        code: "downgrade",
        entry: None,
        installed: Some("1.0.0"),
    });
    let expired = Meta {
        expires: Some(chrono::Utc::now() - chrono::Duration::days(1)),
        created: chrono::Utc::now() - chrono::Duration::days(30),
        ..Meta::default()
    };
    cases.push(Case {
        name: "expired",
        bundle: signed(&expired, entries_of(&members), &payload, &trusted),
        code: "expired",
        entry: None,
        installed: None,
    });
    cases
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn checksum(header: &[u8]) -> u32 {
    header[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&header[156..512])
        .map(|b| u32::from(*b))
        .sum()
}

/// The data of member `name` of an uncompressed tar.
pub fn extract_member(tar: &[u8], name: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(name) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out).unwrap();
            return out;
        }
    }
    panic!("no member {name}");
}
