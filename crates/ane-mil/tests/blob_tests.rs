//! MIL blob storage v2: layout, validation, and agreement with coremltools both ways.

mod support;

use ane_mil::blob::{BlobDType, BlobError};
use ane_mil::{BlobFile, BlobWriter};
use half::f16;

fn sample_file() -> (Vec<u8>, Vec<(u64, BlobDType, usize)>) {
    let mut w = BlobWriter::new();
    let a = w.add_fp16(
        &(0..48 * 64)
            .map(|i| f16::from_f32(i as f32 / 64.0 - 24.0))
            .collect::<Vec<_>>(),
    );
    let b = w.add_int8(&(0..65).map(|i| (i * 7 - 200) as i8).collect::<Vec<_>>());
    let c = w.add_fp32(&[1.5, -2.25, 3.0]);
    let d = w.add_uint8(&[255]);
    (
        w.finish(),
        vec![
            (a, BlobDType::Float16, 6144),
            (b, BlobDType::Int8, 65),
            (c, BlobDType::Float32, 12),
            (d, BlobDType::UInt8, 1),
        ],
    )
}

#[test]
fn writer_lays_out_header_and_aligned_records() {
    let (bytes, blobs) = sample_file();
    assert_eq!(&bytes[0..8], &[4, 0, 0, 0, 2, 0, 0, 0]);
    assert!(bytes[8..64].iter().all(|&b| b == 0));
    // first record at 64, data at 128; each next record 64-aligned after the previous payload
    assert_eq!(
        blobs.iter().map(|b| b.0).collect::<Vec<_>>(),
        [64, 6272, 6464, 6592]
    );
    assert_eq!(&bytes[64..68], &[0xEF, 0xBE, 0xAD, 0xDE]);
    assert_eq!(u64::from_le_bytes(bytes[80..88].try_into().unwrap()), 128);
    let f = BlobFile::parse(bytes).unwrap();
    for (rec, (off, dt, size)) in f.records().iter().zip(&blobs) {
        assert_eq!((rec.offset, rec.dtype, rec.size), (*off, *dt, *size as u64));
        assert_eq!(rec.data_offset, off + 64);
    }
}

#[test]
fn reader_rejects_malformed_files() {
    let (good, _) = sample_file();
    let set = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        BlobFile::parse(b).unwrap_err()
    };
    assert_eq!(
        BlobFile::parse(good[..10].to_vec()).unwrap_err(),
        BlobError::TooShort { len: 10 }
    );
    assert_eq!(set(4, &[1, 0, 0, 0]), BlobError::BadVersion(1));
    assert!(matches!(
        set(6272, &[0, 0, 0, 0]),
        BlobError::BadSentinel {
            index: 1,
            offset: 6272,
            found: 0
        }
    ));
    assert!(matches!(
        set(68, &[99, 0, 0, 0]),
        BlobError::UnknownDType { code: 99, .. }
    ));
    // a payload offset pointing back into the metadata record
    assert!(matches!(
        set(80, &64u64.to_le_bytes()),
        BlobError::Overlap {
            what: "its own metadata",
            ..
        }
    ));
    // a size running past the end of the file
    assert!(matches!(
        set(72, &(1u64 << 40).to_le_bytes()),
        BlobError::Truncated {
            what: "payload",
            ..
        }
    ));
    // a count larger than the records present
    assert!(matches!(
        set(0, &[5, 0, 0, 0]),
        BlobError::Truncated {
            index: 4,
            what: "metadata",
            ..
        }
    ));
    // truncated last payload
    let e = BlobFile::parse(good[..good.len() - 1].to_vec()).unwrap_err();
    assert!(matches!(e, BlobError::Truncated { index: 3, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("needs bytes up to 6657 but the file has 6656"),
        "{e}"
    );
    // a misaligned payload offset
    assert!(matches!(
        set(80, &130u64.to_le_bytes()),
        BlobError::Misaligned { .. }
    ));
}

fn manifest_line(dtype: &str, offset: u64, values: impl Iterator<Item = f64>) -> String {
    let vals: Vec<String> = values.map(|v| format!("{v:?}")).collect();
    format!("{dtype} {offset} {}\n", vals.join(" "))
}

#[test]
fn coremltools_reads_ours_and_we_read_theirs() {
    let Some(py) = ane_testutil::coremltools::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();

    let fp16: Vec<f16> = (0..3001)
        .map(|i| f16::from_f32(((i * 37) % 201) as f32 / 8.0 - 12.5))
        .collect();
    let int8: Vec<i8> = (0..77).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let fp32 = [0.1f32, -1e30, 65504.0, 7.0];
    let uint8: Vec<u8> = (0..130).map(|i| (i * 3) as u8).collect();
    let mut w = BlobWriter::new();
    let mut manifest = String::new();
    manifest += &manifest_line("fp16", w.add_fp16(&fp16), fp16.iter().map(|v| v.to_f64()));
    manifest += &manifest_line("int8", w.add_int8(&int8), int8.iter().map(|&v| v as f64));
    manifest += &manifest_line("fp32", w.add_fp32(&fp32), fp32.iter().map(|&v| v as f64));
    manifest += &manifest_line(
        "uint8",
        w.add_uint8(&uint8),
        uint8.iter().map(|&v| v as f64),
    );
    let ours = w.finish();
    std::fs::write(p("ours.bin"), &ours).unwrap();
    std::fs::write(p("ours.txt"), manifest).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/blob_roundtrip.py");
    let out = std::process::Command::new(py)
        .args([
            script,
            &p("ours.bin"),
            &p("ours.txt"),
            &p("copy.bin"),
            &p("theirs.bin"),
            &p("theirs.txt"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // coremltools' writer produced the same bytes for the same values
    assert_eq!(std::fs::read(p("copy.bin")).unwrap(), ours);

    // and we read what coremltools wrote on its own
    let theirs = BlobFile::parse(std::fs::read(p("theirs.bin")).unwrap()).unwrap();
    let listing = std::fs::read_to_string(p("theirs.txt")).unwrap();
    let mut checked = 0;
    for line in listing.lines() {
        let mut parts = line.split_whitespace();
        let dtype = parts.next().unwrap();
        let offset: u64 = parts.next().unwrap().parse().unwrap();
        let want: Vec<f64> = parts.map(|v| v.parse().unwrap()).collect();
        let rec = theirs
            .record_at(offset)
            .unwrap_or_else(|| panic!("no record at {offset}"));
        let payload = theirs.payload(rec);
        let got: Vec<f64> = match (dtype, rec.dtype) {
            ("fp16", BlobDType::Float16) => payload
                .chunks(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            ("fp32", BlobDType::Float32) => payload
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            ("int8", BlobDType::Int8) => payload.iter().map(|&b| b as i8 as f64).collect(),
            ("uint8", BlobDType::UInt8) => payload.iter().map(|&b| b as f64).collect(),
            other => panic!("type mismatch {other:?}"),
        };
        assert_eq!(got, want, "{dtype} @ {offset}");
        checked += 1;
    }
    assert_eq!(checked, 6);
    assert_eq!(theirs.records().len(), 6);
}
