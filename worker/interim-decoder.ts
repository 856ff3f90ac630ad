// INTERIM: a minimal read-only qcow2 decoder (header, extensions, snapshot table, L1 and refcount
// table entries) so the web app can be built and tested before the engine (core/image,
// core/format) lands. It validates only what it needs to stay safe on hostile input (sizes are
// capped before allocating). Everything here is replaced by Qcow2Image calls in
// worker/engine-adapter.ts; nothing else imports it.
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import type { HeaderDTO, HeaderExtensionDTO, L1EntryDTO, RefcountTableEntryDTO, SnapshotDTO } from './api.ts';

const MAGIC = 0x514649fb;
const MAX_SNAPSHOTS = 65536;
const MAX_SNAPSHOT_TABLE_BYTES = 64 << 20;
const TWO32 = 2 ** 32;

function u64(v: DataView, at: number): number {
  // Exact below 2^53; larger values (never valid offsets) lose precision, and are rejected by callers.
  return v.getUint32(at) * TWO32 + v.getUint32(at + 4);
}
function hex16(v: DataView, at: number): string {
  return v.getUint32(at).toString(16).padStart(8, '0') + v.getUint32(at + 4).toString(16).padStart(8, '0');
}

const EXT_NAMES: Record<number, string> = {
  0xe2792aca: 'backing file format name',
  0x6803f857: 'feature name table',
  0x23852875: 'bitmaps',
  0x0537be77: 'full disk encryption header pointer',
  0x44415441: 'external data file name',
};

export async function readHeader(store: ImageStore): Promise<HeaderDTO> {
  const head = await store.read(0, 112);
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const magic = v.getUint32(0);
  if (magic !== MAGIC) throw new QcowError('NOT_QCOW2', 'Image is not in qcow2 format', { magic });
  const version = v.getUint32(4);
  if (version !== 2 && version !== 3) throw new QcowError('UNSUPPORTED_VERSION', `Unsupported qcow2 version ${version}`, { version });
  const clusterBits = v.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) {
    throw new QcowError('UNSUPPORTED_CLUSTER_SIZE', `Unsupported cluster size: 2^${clusterBits}`, { clusterBits });
  }
  const clusterSize = 2 ** clusterBits;
  const v3 = version >= 3;
  const headerLength = v3 ? v.getUint32(100) : 72;
  if (v3 && headerLength < 104) throw new QcowError('HEADER_TOO_SHORT', 'qcow2 header too short', { headerLength });
  if (headerLength > clusterSize) throw new QcowError('HEADER_EXCEEDS_CLUSTER', 'qcow2 header exceeds cluster size', { headerLength });
  const backingFileOffset = u64(v, 8);
  const backingFileSize = v.getUint32(16);
  const refcountOrder = v3 ? v.getUint32(96) : 4;
  const inc = v3 ? [v.getUint32(72), v.getUint32(76)] : [0, 0];
  const com = v3 ? [v.getUint32(80), v.getUint32(84)] : [0, 0];
  const auto = v3 ? [v.getUint32(88), v.getUint32(92)] : [0, 0];
  const unknown = (hi: number, lo: number, known: number): string => {
    const l = (lo & ~known) >>> 0;
    return hi === 0 && l === 0 ? '' : '0x' + (hi ? hi.toString(16) + l.toString(16).padStart(8, '0') : l.toString(16));
  };
  const h: HeaderDTO = {
    magic,
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    clusterSize,
    size: u64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: u64(v, 40),
    refcountTableOffset: u64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: u64(v, 64),
    incompatibleFeatures: inc[1]!,
    compatibleFeatures: com[1]!,
    autoclearFeatures: auto[1]!,
    unknownIncompatible: unknown(inc[0]!, inc[1]!, 0x1f),
    unknownCompatible: unknown(com[0]!, com[1]!, 0x1),
    unknownAutoclear: unknown(auto[0]!, auto[1]!, 0x3),
    refcountOrder,
    refcountBits: 2 ** Math.min(refcountOrder, 6),
    headerLength,
    compressionType: v3 && headerLength > 104 ? v.getUint8(104) : 0,
    extensions: [],
  };
  // Header extensions: from header_length to the backing file name (or the end of cluster 0).
  const end = backingFileOffset > 0 && backingFileOffset <= clusterSize ? backingFileOffset : clusterSize;
  if (v3 && headerLength < end) {
    const area = await store.read(0, end);
    const av = new DataView(area.buffer, area.byteOffset, area.byteLength);
    let off = headerLength;
    while (off + 8 <= end) {
      const type = av.getUint32(off);
      const len = av.getUint32(off + 4);
      if (type === 0) break;
      if (len > end - off - 8) throw new QcowError('HEADER_EXTENSION_INVALID', 'Header extension too large', { offset: off, type, length: len });
      const ext: HeaderExtensionDTO = { type, offset: off, length: len, name: EXT_NAMES[type] ?? 'unknown' };
      h.extensions.push(ext);
      if (type === 0xe2792aca) h.backingFormat = new TextDecoder().decode(area.subarray(off + 8, off + 8 + len));
      off += 8 + Math.ceil(len / 8) * 8;
    }
  }
  if (backingFileOffset > 0) {
    if (backingFileOffset > clusterSize) throw new QcowError('INVALID_BACKING_FILE_OFFSET', 'Invalid backing file offset', { backingFileOffset });
    if (backingFileSize > Math.min(1023, clusterSize - backingFileOffset)) {
      throw new QcowError('BACKING_FILE_NAME_TOO_LONG', 'Backing file name too long', { backingFileSize });
    }
    h.backingFile = new TextDecoder().decode(await store.read(backingFileOffset, backingFileSize));
  }
  return h;
}

export async function readSnapshots(store: ImageStore, h: HeaderDTO): Promise<SnapshotDTO[]> {
  if (h.nbSnapshots === 0) return [];
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw new QcowError('SNAPSHOT_TABLE_INVALID', 'Snapshot table too large', { nbSnapshots: h.nbSnapshots });
  if (h.snapshotsOffset % h.clusterSize !== 0) {
    throw new QcowError('TABLE_OFFSET_INVALID', 'Snapshot table offset invalid', { offset: h.snapshotsOffset });
  }
  const out: SnapshotDTO[] = [];
  let off = h.snapshotsOffset;
  const limit = h.snapshotsOffset + MAX_SNAPSHOT_TABLE_BYTES;
  for (let i = 0; i < h.nbSnapshots; i++) {
    off = Math.ceil(off / 8) * 8;
    const fixed = await store.read(off, 40);
    const v = new DataView(fixed.buffer, fixed.byteOffset, 40);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const eds = v.getUint32(36);
    if (eds > 1024) throw new QcowError('SNAPSHOT_TABLE_INVALID', `Too much extra metadata in snapshot table entry ${i}`, { index: i, extraDataSize: eds });
    const rest = await store.read(off + 40, eds + idLen + nameLen);
    const rv = new DataView(rest.buffer, rest.byteOffset, rest.byteLength);
    const s: SnapshotDTO = {
      l1TableOffset: u64(v, 0),
      l1Size: v.getUint32(8),
      dateSec: v.getUint32(16),
      dateNsec: v.getUint32(20),
      vmClockNsec: u64(v, 24),
      vmStateSize: v.getUint32(32),
      extraDataSize: eds,
      id: new TextDecoder().decode(rest.subarray(eds, eds + idLen)),
      name: new TextDecoder().decode(rest.subarray(eds + idLen, eds + idLen + nameLen)),
    };
    if (eds >= 8) s.vmStateSize = u64(rv, 0);
    s.diskSize = eds >= 16 ? u64(rv, 8) : h.size;
    if (eds >= 24) s.icount = rv.getInt32(16) === -1 && rv.getInt32(20) === -1 ? -1 : u64(rv, 16);
    out.push(s);
    off += 40 + eds + idLen + nameLen;
    if (off > limit) throw new QcowError('SNAPSHOT_TABLE_INVALID', 'Snapshot table is too big', { offset: off });
  }
  return out;
}

/** A page of a table of u64 entries at `tableOffset` holding `total` entries. */
async function tablePage(store: ImageStore, tableOffset: number, total: number, start: number, count: number): Promise<{ v: DataView; n: number }> {
  const n = Math.max(0, Math.min(count, total - start));
  const bytes = await store.read(tableOffset + start * 8, n * 8);
  return { v: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), n };
}

export async function readL1Page(store: ImageStore, h: HeaderDTO, start: number, count: number): Promise<L1EntryDTO[]> {
  const { v, n } = await tablePage(store, h.l1TableOffset, h.l1Size, start, count);
  const out: L1EntryDTO[] = [];
  for (let i = 0; i < n; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    // bits 9–55 offset; 63 COPIED; 0–8 and 56–62 reserved (L1E_RESERVED_MASK 0x7F000000000001FF)
    const l2Offset = (hi & 0x00ffffff) * TWO32 + (lo - (lo % 512));
    const resHi = hi & 0x7f000000;
    const resLo = lo & 0x1ff;
    out.push({
      index: start + i,
      raw: hex16(v, i * 8),
      l2Offset,
      copied: (hi & 0x80000000) !== 0,
      reserved: resHi || resLo ? '0x' + ((resHi >>> 0) * TWO32 + resLo).toString(16) : '',
    });
  }
  return out;
}

export async function readRefcountTablePage(store: ImageStore, h: HeaderDTO, start: number, count: number): Promise<RefcountTableEntryDTO[]> {
  const total = (h.refcountTableClusters * h.clusterSize) / 8;
  const { v, n } = await tablePage(store, h.refcountTableOffset, total, start, count);
  const out: RefcountTableEntryDTO[] = [];
  for (let i = 0; i < n; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    out.push({ index: start + i, raw: hex16(v, i * 8), refblockOffset: hi * TWO32 + (lo - (lo % 512)) });
  }
  return out;
}
