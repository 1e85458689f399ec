//! Hard limits the reader enforces, so that no bundle (even one signed by a
//! trusted key by mistake) can exhaust memory, disk or time.

/// Limits on what a bundle may hold. The defaults fit any real release with a
/// wide margin; the installer has no reason to change them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest read into memory.
    pub max_manifest_bytes: u64,
    /// Most entries (files and directories).
    pub max_entries: u64,
    /// Largest single file.
    pub max_file_size: u64,
    /// Largest sum of all file sizes.
    pub max_total_size: u64,
    /// Most the payload may expand: the bytes of all files over the payload's
    /// size. Only applies above [`Limits::ratio_floor`].
    pub max_compression_ratio: u64,
    /// Files adding up to less than this are never a bomb, whatever the ratio:
    /// as many identical 4 KiB files as a bundle may hold stay below it.
    pub ratio_floor: u64,
    /// Largest zstd window, as a power of two. The builder uses at most 2^23.
    pub max_window_log: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifest_bytes: 64 << 20,
            max_entries: 250_000,
            max_file_size: 16 << 30,
            max_total_size: 64 << 30,
            max_compression_ratio: 1000,
            ratio_floor: 1 << 30,
            max_window_log: 24,
        }
    }
}

/// Longest entry path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Most signatures a bundle may carry.
pub const MAX_SIGNATURES: u32 = 16;
/// Largest GNU long-name or PAX extended header the reader accepts.
pub const MAX_EXTENSION_BYTES: u64 = 8192;
