//! Any text through the config parser and validate(): errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Config::parse(text) {
            let _ = c.validate();
            let _ = c.needed_fields();
            let _ = c.subject();
        }
    }
});
