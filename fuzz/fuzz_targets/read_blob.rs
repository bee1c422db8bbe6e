//! Any bytes: the blob reader validates or errors, never panics or reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = ane_mil::BlobFile::parse(data.to_vec()) {
        for r in file.records() {
            assert_eq!(file.payload(r).len() as u64, r.size);
            assert!(file.record_at(r.offset).is_some());
        }
    }
});
