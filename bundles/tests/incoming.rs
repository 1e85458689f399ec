//! The streaming reader ([`hangar_bundle::Incoming`], what an upload is
//! verified with while it arrives) refuses every hostile bundle of the
//! corpus with the same error as the file reader, however the bytes are cut
//! into pieces, and accepts the genuine ones.

mod common;

use std::io::Read;
use std::path::Path;

use common::corpus;
use common::trust;
use hangar_bundle::{Bundle, BundleError, ExtractOptions, Incoming, Limits, TrustStore};

/// Hands out `data` in pieces of varying sizes (1 byte to 64 KiB), as a
/// network does.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = (self.step * 7 + 13) % (64 << 10) + 1;
        let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn options<'a>(installed: Option<&str>) -> ExtractOptions<'a> {
    ExtractOptions {
        installed_version: installed.map(|v| v.parse().unwrap()),
        ..Default::default()
    }
}

/// What an upload does: the head first, then the length it declared must be
/// the length the manifest gives (`length_mismatch` otherwise), then the rest.
fn streamed(
    bytes: &[u8],
    name: &Path,
    trust: &TrustStore,
    installed: Option<&str>,
) -> Result<u64, (&'static str, String)> {
    let fail = |e: BundleError| (e.code(), e.to_string());
    let reader = Trickle {
        data: bytes,
        pos: 0,
        step: 1,
    };
    let incoming = Incoming::begin(reader, name, trust, &Limits::default()).map_err(fail)?;
    if incoming.total_size() != bytes.len() as u64 {
        return Err((
            "length_mismatch",
            format!(
                "{} bytes declared, {} in the manifest",
                bytes.len(),
                incoming.total_size()
            ),
        ));
    }
    incoming.check_policy(&options(installed)).map_err(fail)?;
    incoming
        .finish(options(installed))
        .map(|s| s.files)
        .map_err(fail)
}

#[test]
fn every_hostile_bundle_is_refused_as_the_file_reader_refuses_it() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let trust = trust(&[&corpus::trusted_key()]);
    let mut failures = Vec::new();
    for (i, case) in corpus::hostile(&outside).iter().enumerate() {
        let path = root.path().join(format!("{i:02}.bundle"));
        std::fs::write(&path, &case.bundle).unwrap();
        let from_file = Bundle::open(&path, &trust).and_then(|b| b.verify(options(case.installed)));
        let file_code = from_file.map(|_| "accepted").unwrap_or_else(|e| e.code());
        match streamed(&case.bundle, &path, &trust, case.installed) {
            Ok(_) => failures.push(format!("{}: accepted while streaming", case.name)),
            Err((code, message)) => {
                // A file's length is known at once: a truncated or padded
                // file is refused by it before anything else; a stream finds
                // out when the declared length and the manifest disagree.
                let same = code == file_code
                    || (code == "length_mismatch"
                        && matches!(file_code, "truncated" | "trailing_bytes" | "corrupt_header"));
                if !same {
                    failures.push(format!(
                        "{}: {code} while streaming, {file_code} from the file ({message})",
                        case.name
                    ));
                }
                if message.contains('\n') {
                    failures.push(format!("{}: not one line: {message}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn genuine_bundles_verify_from_a_stream_cut_into_any_pieces() {
    let key = corpus::trusted_key();
    let trust = trust(&[&key]);
    let bundle = corpus::genuine(
        &common::Meta::default(),
        &corpus::sample(&corpus::tool_v1()),
        &[&key],
    );
    assert_eq!(
        streamed(&bundle, Path::new("upload"), &trust, None).unwrap(),
        5
    );
    // One byte more than the manifest says is refused at the end.
    let mut padded = bundle.clone();
    padded.push(0);
    let reader = Trickle {
        data: &padded,
        pos: 0,
        step: 1,
    };
    let incoming =
        Incoming::begin(reader, Path::new("upload"), &trust, &Limits::default()).unwrap();
    assert_eq!(incoming.total_size() + 1, padded.len() as u64);
    let e = incoming.finish(ExtractOptions::default()).unwrap_err();
    assert_eq!(e.code(), "trailing_bytes", "{e}");
    // A stream that stops early is a truncated bundle.
    let cut = &bundle[..bundle.len() - 100];
    let e = streamed_err(cut, &trust);
    assert_eq!(e.code(), "truncated", "{e}");
}

fn streamed_err(bytes: &[u8], trust: &TrustStore) -> BundleError {
    let reader = Trickle {
        data: bytes,
        pos: 0,
        step: 1,
    };
    match Incoming::begin(reader, Path::new("upload"), trust, &Limits::default()) {
        Ok(incoming) => incoming.finish(ExtractOptions::default()).unwrap_err(),
        Err(e) => e,
    }
}
