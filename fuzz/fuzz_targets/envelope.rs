//! Envelope decoding (`decode`, `decode_from`, then `decompress`): the first byte picks raw stored bytes (what
//! Redis may hand back) or an envelope built from the rest's fields, maybe compressed, then damaged.
#![no_main]

use arbitrary::Unstructured;
use cache_server::fuzzing::{self, Header};
use cache_server_fuzz::{codec, text};
use libfuzzer_sys::fuzz_target;

fn built(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let header = Header {
        created_at_ms: u.arbitrary()?,
        expires_at_ms: u.arbitrary()?,
        size_bytes: u.arbitrary()?,
        content_type: text(u)?,
        model_hash: text(u)?,
        metadata: u.arbitrary()?,
        export_options_json: text(u)?,
    };
    let codec = codec(u.arbitrary()?);
    let compressed = u.arbitrary()?;
    let flip = u.arbitrary()?;
    let cut = u.arbitrary()?;
    let value = u.bytes(u.len())?;
    fuzzing::built_envelope(&header, codec, value, compressed, flip, cut);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let _ = built(&mut Unstructured::new(rest));
        }
        Some((_, rest)) => fuzzing::envelope(rest),
        None => fuzzing::envelope(data),
    }
});
