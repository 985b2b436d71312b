//! Keys (`Keyspace::key`, the rendering, `parse_rendered`): the first byte picks any text parsed as a rendered
//! key, or two key requests (the second often a near miss of the first) validated, rendered, parsed back and
//! compared for injectivity under any keyspace.
#![no_main]

use arbitrary::Unstructured;
use cache_server::fuzzing::{self, Keyspace};
use cache_server_fuzz::{cache_key, keyspace, near};
use libfuzzer_sys::fuzz_target;

fn pair(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let keyspace = keyspace(u)?;
    let a = cache_key(u)?;
    let b = if u.arbitrary()? {
        near(u, &a)?
    } else {
        cache_key(u)?
    };
    fuzzing::keys_are_injective(&keyspace, &a, &b);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let _ = pair(&mut Unstructured::new(rest));
        }
        Some((_, rest)) => {
            let keyspace = Keyspace::new("cache", "default");
            fuzzing::rendered(&keyspace, &String::from_utf8_lossy(rest));
        }
        None => {}
    }
});
