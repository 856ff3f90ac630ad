// Format constants and QEMU's limits (docs/qcow2-format.md §1, §2.2), with the reason each exists.

export const QCOW_MAGIC = 0x514649fb; // "QFI\xfb"

export const MIN_CLUSTER_BITS = 9; // 512 B clusters
export const MAX_CLUSTER_BITS = 21; // 2 MiB clusters: QEMU refuses larger
/** Extended L2 needs subclusters of at least 512 B: 32 per cluster ⇒ cluster ≥ 16 KiB. */
export const MIN_EXTL2_CLUSTER_BITS = 14;
export const SUBCLUSTERS_PER_CLUSTER = 32;

export const V2_HEADER_LENGTH = 72;
export const V3_MIN_HEADER_LENGTH = 104;
/** QEMU writes header_length 112: the 104-byte v3 header + compression_type + 7 bytes padding. */
export const QEMU_HEADER_LENGTH = 112;

/** QCOW_MAX_L1_SIZE: 32 MiB of L1 (4 Mi entries). */
export const MAX_L1_SIZE_BYTES = 32 * 1024 * 1024;
/** QCOW_MAX_REFTABLE_SIZE: 8 MiB of refcount table. */
export const MAX_REFTABLE_SIZE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
/** QCOW_MAX_SNAPSHOTS_SIZE: the whole snapshot table may take at most 64 MiB. */
export const MAX_SNAPSHOTS_SIZE = 1024 * 65536;
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const SNAPSHOT_HEADER_SIZE = 40;
/** Known extra data: vm_state_size_large, disk_size, icount. */
export const SNAPSHOT_EXTRA_KNOWN = 24;
export const MAX_BACKING_FILE_NAME = 1023;
export const MAX_BACKING_FORMAT_NAME = 15; // QEMU: len < 16
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 67107840;
/** QCOW_MAX_CLUSTER_OFFSET: host offsets live in bits 9..55. */
export const MAX_CLUSTER_OFFSET = 2 ** 56 - 1;
/** Largest backing chain we follow: stops a self-referencing chain from recursing forever. */
export const MAX_BACKING_CHAIN_DEPTH = 64;
export const INT_MAX = 0x7fffffff;

// Header extension types (§1.4)
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

// Incompatible feature bits (§1.3)
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_MASK = 0x1fn;
// Compatible
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const COMPAT_MASK = 0x1n;
// Autoclear
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const AUTOCLEAR_MASK = 0x3n;

export const FEATURE_TYPE_INCOMPAT = 0;
export const FEATURE_TYPE_COMPAT = 1;
export const FEATURE_TYPE_AUTOCLEAR = 2;

/** The feature-name table QEMU writes (type, bit, name), in QEMU's order. */
export const QEMU_FEATURE_NAMES: ReadonlyArray<readonly [number, number, string]> = [
  [FEATURE_TYPE_INCOMPAT, 0, 'dirty bit'],
  [FEATURE_TYPE_INCOMPAT, 1, 'corrupt bit'],
  [FEATURE_TYPE_INCOMPAT, 2, 'external data file'],
  [FEATURE_TYPE_INCOMPAT, 3, 'compression type'],
  [FEATURE_TYPE_INCOMPAT, 4, 'extended L2 entries'],
  [FEATURE_TYPE_COMPAT, 0, 'lazy refcounts'],
  [FEATURE_TYPE_AUTOCLEAR, 0, 'bitmaps'],
  [FEATURE_TYPE_AUTOCLEAR, 1, 'raw external data'],
];

export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;
