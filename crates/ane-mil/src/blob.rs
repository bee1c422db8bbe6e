//! MIL blob storage v2: the `weights/*.bin` files that `BLOBFILE` constants point into.
//!
//! Layout (little-endian; coremltools `MILBlob/Blob/StorageFormat.hpp`):
//! a 64-byte file header (`u32 count`, `u32 version = 2`, 56 reserved bytes), then per blob a
//! 64-byte metadata record at a 64-byte-aligned offset (`u32 sentinel = 0xDEADBEEF`,
//! `u32 dtype`, `u64 size_in_bytes`, `u64 data_offset` (absolute), `u64 padding_bits`,
//! 32 reserved bytes) followed by the payload. `BLOBFILE(offset = …)` names the offset of the
//! **record**, not of the payload.

use std::collections::BTreeMap;

use half::f16;

use crate::types::DType;

/// The alignment of records and payloads.
pub const BLOB_ALIGNMENT: usize = 64;
/// The record sentinel.
pub const BLOB_SENTINEL: u32 = 0xDEAD_BEEF;
/// The storage version this module reads and writes.
pub const BLOB_VERSION: u32 = 2;

/// Element type codes of blob storage (`BlobDataType.hpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BlobDType {
    /// IEEE half.
    Float16 = 1,
    /// IEEE single.
    Float32 = 2,
    /// Unsigned 8-bit.
    UInt8 = 3,
    /// Signed 8-bit.
    Int8 = 4,
    /// bfloat16.
    BFloat16 = 5,
    /// Signed 16-bit.
    Int16 = 6,
    /// Unsigned 16-bit.
    UInt16 = 7,
    /// Signed 4-bit.
    Int4 = 8,
    /// Unsigned 1-bit.
    UInt1 = 9,
    /// Unsigned 2-bit.
    UInt2 = 10,
    /// Unsigned 4-bit.
    UInt4 = 11,
    /// Unsigned 3-bit.
    UInt3 = 12,
    /// Unsigned 6-bit.
    UInt6 = 13,
    /// Signed 32-bit.
    Int32 = 14,
    /// Unsigned 32-bit.
    UInt32 = 15,
    /// fp8 e4m3fn.
    Float8E4M3FN = 16,
    /// fp8 e5m2.
    Float8E5M2 = 17,
}

impl BlobDType {
    /// The type for a storage code.
    pub fn from_code(code: u32) -> Option<Self> {
        use BlobDType::*;
        Some(match code {
            1 => Float16,
            2 => Float32,
            3 => UInt8,
            4 => Int8,
            5 => BFloat16,
            6 => Int16,
            7 => UInt16,
            8 => Int4,
            9 => UInt1,
            10 => UInt2,
            11 => UInt4,
            12 => UInt3,
            13 => UInt6,
            14 => Int32,
            15 => UInt32,
            16 => Float8E4M3FN,
            17 => Float8E5M2,
            _ => return None,
        })
    }

    /// The storage type for a MIL element type, where blobs can hold it.
    pub fn from_mil(d: DType) -> Option<Self> {
        Some(match d {
            DType::Fp16 => BlobDType::Float16,
            DType::Fp32 => BlobDType::Float32,
            DType::Int8 => BlobDType::Int8,
            DType::UInt8 => BlobDType::UInt8,
            DType::Int32 => BlobDType::Int32,
            _ => return None,
        })
    }
}

/// What can be wrong with a weight file or a reference into it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Shorter than the 64-byte header.
    #[error("weight file is {len} bytes, shorter than the 64-byte header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// Header version is not 2.
    #[error("weight file has storage version {0}, expected 2 (MIL blob storage v2)")]
    BadVersion(u32),
    /// A record does not start with 0xDEADBEEF.
    #[error(
        "blob record {index} at offset {offset}: bad sentinel 0x{found:08X} (expected 0xDEADBEEF)"
    )]
    BadSentinel {
        /// Record number.
        index: u32,
        /// Record offset.
        offset: u64,
        /// What was there.
        found: u32,
    },
    /// Unknown storage type code.
    #[error("blob record at offset {offset}: unknown data type code {code}")]
    UnknownDType {
        /// Record offset.
        offset: u64,
        /// The code.
        code: u32,
    },
    /// A record or payload runs past the end of the file.
    #[error("blob record {index} at offset {offset}: {what} needs bytes up to {needed} but the file has {len}")]
    Truncated {
        /// Record number.
        index: u32,
        /// Record offset.
        offset: u64,
        /// "metadata" or "payload".
        what: &'static str,
        /// End offset needed.
        needed: u64,
        /// File length.
        len: usize,
    },
    /// A payload overlaps its own or another record.
    #[error("blob record {index} at offset {offset}: payload at {data_offset} overlaps {what}")]
    Overlap {
        /// Record number.
        index: u32,
        /// Record offset.
        offset: u64,
        /// Payload offset.
        data_offset: u64,
        /// What it overlaps.
        what: &'static str,
    },
    /// A record or payload offset is not 64-byte aligned.
    #[error("blob record {index}: {what} offset {value} is not a multiple of 64")]
    Misaligned {
        /// Record number.
        index: u32,
        /// "record" or "payload".
        what: &'static str,
        /// The offset.
        value: u64,
    },
    /// No record starts at the offset a BLOBFILE names.
    #[error("no blob record at offset {offset} in {path} (records at {known})")]
    NoRecordAt {
        /// The file's MIL path.
        path: String,
        /// Requested offset.
        offset: u64,
        /// Offsets that exist, comma separated.
        known: String,
    },
    /// The program names a weight file that was not supplied.
    #[error("weight file {path} was not supplied")]
    MissingFile {
        /// The file's MIL path.
        path: String,
    },
    /// The record's type differs from the type the program declares.
    #[error("blob at offset {offset} in {path} holds {found:?}, the program declares {expected}")]
    DTypeMismatch {
        /// The file's MIL path.
        path: String,
        /// Record offset.
        offset: u64,
        /// Declared type.
        expected: DType,
        /// Stored type.
        found: BlobDType,
    },
    /// The record's size differs from what the declared shape needs.
    #[error(
        "blob at offset {offset} in {path} has {found} bytes, the declared shape needs {expected}"
    )]
    SizeMismatch {
        /// The file's MIL path.
        path: String,
        /// Record offset.
        offset: u64,
        /// Bytes needed.
        expected: u64,
        /// Bytes stored.
        found: u64,
    },
}

/// One record of a blob file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    /// Offset of the 64-byte metadata record (what BLOBFILE names).
    pub offset: u64,
    /// Stored type.
    pub dtype: BlobDType,
    /// Payload length in bytes.
    pub size: u64,
    /// Absolute payload offset.
    pub data_offset: u64,
    /// Unused trailing bits for sub-byte types.
    pub padding_bits: u64,
}

/// A validated blob file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobFile {
    bytes: Vec<u8>,
    records: Vec<BlobRecord>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

const fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOB_ALIGNMENT as u64) * BLOB_ALIGNMENT as u64
}

impl BlobFile {
    /// Validates `bytes`: header, then every record in sequence, as coremltools' writer lays them out.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, BlobError> {
        let len = bytes.len();
        if len < BLOB_ALIGNMENT {
            return Err(BlobError::TooShort { len });
        }
        let count = u32_at(&bytes, 0);
        let version = u32_at(&bytes, 4);
        if version != BLOB_VERSION {
            return Err(BlobError::BadVersion(version));
        }
        let mut records = Vec::with_capacity(count.min(1 << 16) as usize);
        let mut at = BLOB_ALIGNMENT as u64;
        for index in 0..count {
            let truncated = |what, needed| BlobError::Truncated {
                index,
                offset: at,
                what,
                needed,
                len,
            };
            let meta_end = at.checked_add(64).ok_or(truncated("metadata", u64::MAX))?;
            if meta_end > len as u64 {
                return Err(truncated("metadata", meta_end));
            }
            let m = at as usize;
            let sentinel = u32_at(&bytes, m);
            if sentinel != BLOB_SENTINEL {
                return Err(BlobError::BadSentinel {
                    index,
                    offset: at,
                    found: sentinel,
                });
            }
            let code = u32_at(&bytes, m + 4);
            let dtype =
                BlobDType::from_code(code).ok_or(BlobError::UnknownDType { offset: at, code })?;
            let size = u64_at(&bytes, m + 8);
            let data_offset = u64_at(&bytes, m + 16);
            let padding_bits = u64_at(&bytes, m + 24);
            if data_offset < meta_end {
                let what = if data_offset < at {
                    "an earlier record"
                } else {
                    "its own metadata"
                };
                return Err(BlobError::Overlap {
                    index,
                    offset: at,
                    data_offset,
                    what,
                });
            }
            if !data_offset.is_multiple_of(BLOB_ALIGNMENT as u64) {
                return Err(BlobError::Misaligned {
                    index,
                    what: "payload",
                    value: data_offset,
                });
            }
            let data_end = data_offset
                .checked_add(size)
                .ok_or(truncated("payload", u64::MAX))?;
            if data_end > len as u64 {
                return Err(truncated("payload", data_end));
            }
            records.push(BlobRecord {
                offset: at,
                dtype,
                size,
                data_offset,
                padding_bits,
            });
            at = align_up(data_end);
        }
        Ok(BlobFile { bytes, records })
    }

    /// The records, in file order.
    pub fn records(&self) -> &[BlobRecord] {
        &self.records
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record whose metadata starts at `offset`.
    pub fn record_at(&self, offset: u64) -> Option<&BlobRecord> {
        self.records
            .binary_search_by_key(&offset, |r| r.offset)
            .ok()
            .map(|i| &self.records[i])
    }

    /// The payload of `record`.
    pub fn payload(&self, record: &BlobRecord) -> &[u8] {
        &self.bytes[record.data_offset as usize..(record.data_offset + record.size) as usize]
    }

    fn known_offsets(&self) -> String {
        let v: Vec<String> = self
            .records
            .iter()
            .take(8)
            .map(|r| r.offset.to_string())
            .collect();
        let more = if self.records.len() > 8 { ", ..." } else { "" };
        if v.is_empty() {
            "none".to_string()
        } else {
            format!("{}{more}", v.join(", "))
        }
    }
}

/// Builds a blob file in memory.
#[derive(Clone, Debug)]
pub struct BlobWriter {
    bytes: Vec<u8>,
    count: u32,
}

impl Default for BlobWriter {
    fn default() -> Self {
        BlobWriter::new()
    }
}

impl BlobWriter {
    /// An empty file (header only).
    pub fn new() -> Self {
        let mut bytes = vec![0u8; BLOB_ALIGNMENT];
        bytes[4..8].copy_from_slice(&BLOB_VERSION.to_le_bytes());
        BlobWriter { bytes, count: 0 }
    }

    /// Appends a payload of `dtype`; returns the record offset to write in `BLOBFILE(offset = …)`.
    pub fn add_raw(&mut self, dtype: BlobDType, payload: &[u8]) -> u64 {
        let offset = align_up(self.bytes.len() as u64);
        self.bytes.resize(offset as usize, 0);
        let data_offset = offset + 64;
        let mut meta = [0u8; 64];
        meta[0..4].copy_from_slice(&BLOB_SENTINEL.to_le_bytes());
        meta[4..8].copy_from_slice(&(dtype as u32).to_le_bytes());
        meta[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        meta[16..24].copy_from_slice(&data_offset.to_le_bytes());
        self.bytes.extend_from_slice(&meta);
        self.bytes.extend_from_slice(payload);
        self.count += 1;
        self.bytes[0..4].copy_from_slice(&self.count.to_le_bytes());
        offset
    }

    /// Appends fp16 values.
    pub fn add_fp16(&mut self, values: &[f16]) -> u64 {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(BlobDType::Float16, &bytes)
    }

    /// Appends fp32 values.
    pub fn add_fp32(&mut self, values: &[f32]) -> u64 {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(BlobDType::Float32, &bytes)
    }

    /// Appends int8 values.
    pub fn add_int8(&mut self, values: &[i8]) -> u64 {
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        self.add_raw(BlobDType::Int8, &bytes)
    }

    /// Appends uint8 values.
    pub fn add_uint8(&mut self, values: &[u8]) -> u64 {
        self.add_raw(BlobDType::UInt8, values)
    }

    /// The file's bytes. Like coremltools' writer, the last payload is not padded.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// The weight files of one program, keyed by the path string MIL uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightFiles {
    files: BTreeMap<String, BlobFile>,
}

/// The payload a BLOBFILE constant resolves to, with its declared element type.
#[derive(Clone, Copy, Debug)]
pub struct BlobData<'a> {
    /// Declared element type.
    pub dtype: DType,
    /// Little-endian payload bytes.
    pub bytes: &'a [u8],
}

impl BlobData<'_> {
    /// The payload as fp16 values (for `Fp16` blobs).
    pub fn to_f16(&self) -> Vec<f16> {
        self.bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// The payload as f32 values (for `Fp32` blobs).
    pub fn to_f32(&self) -> Vec<f32> {
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl WeightFiles {
    /// No files.
    pub fn new() -> Self {
        WeightFiles::default()
    }

    /// Parses and adds a file under its MIL path (e.g. `@model_path/weights/weight.bin`).
    pub fn insert(&mut self, path: impl Into<String>, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.files.insert(path.into(), BlobFile::parse(bytes)?);
        Ok(())
    }

    /// The file at `path`.
    pub fn file(&self, path: &str) -> Option<&BlobFile> {
        self.files.get(path)
    }

    /// Paths and files, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BlobFile)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// True when no file was added.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Resolves a BLOBFILE constant, checking offset, type and size against the record.
    pub fn resolve(&self, blob: &crate::ir::BlobRef) -> Result<BlobData<'_>, BlobError> {
        let path = &blob.path;
        let file = self
            .files
            .get(path)
            .ok_or_else(|| BlobError::MissingFile { path: path.clone() })?;
        let rec = file
            .record_at(blob.offset)
            .ok_or_else(|| BlobError::NoRecordAt {
                path: path.clone(),
                offset: blob.offset,
                known: file.known_offsets(),
            })?;
        if BlobDType::from_mil(blob.dtype) != Some(rec.dtype) {
            return Err(BlobError::DTypeMismatch {
                path: path.clone(),
                offset: blob.offset,
                expected: blob.dtype,
                found: rec.dtype,
            });
        }
        let elem = blob.dtype.size_bytes().unwrap_or(0) as u64;
        let expected = blob
            .shape
            .iter()
            .try_fold(elem, |n, &d| n.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if rec.size != expected {
            return Err(BlobError::SizeMismatch {
                path: path.clone(),
                offset: blob.offset,
                expected,
                found: rec.size,
            });
        }
        Ok(BlobData {
            dtype: blob.dtype,
            bytes: file.payload(rec),
        })
    }
}
