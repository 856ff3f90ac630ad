// The internal snapshot table (docs/qcow2-format.md §1.8, §2.3): parse with QEMU's limits checked
// before anything is allocated, keep unknown extra data verbatim, and encode as QEMU's
// qcow2_write_snapshots does (extra_data_size = 24 + unknown, entries 8-aligned). Pure.
import { entriesDecoded } from '../work-count.ts';
import { QcowError } from '../errors.ts';
import { alignUp, be16, be32, be64, decodeString, encodeString, put16, put32, put64 } from './bytes.ts';
import * as C from './constants.ts';

export interface Snapshot {
  l1TableOffset: number;
  l1Size: number;
  idStr: string;
  name: string;
  /** Raw id/name bytes (kept so a rewrite reproduces them exactly). */
  idBytes: Uint8Array;
  nameBytes: Uint8Array;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** vm_state_size_large when present, else the u32 field. */
  vmStateSize: number;
  /** As stored on disk. */
  extraDataSize: number;
  /** disk_size from extra data, or the image's virtual size when absent. */
  diskSize: number;
  /** −1 when not recorded. */
  icount: number;
  /** Extra data beyond the 24 known bytes, kept verbatim. */
  unknownExtraData: Uint8Array;
  /** Byte offset of this entry in the file. */
  entryOffset: number;
}

export interface SnapshotTableResult {
  snapshots: Snapshot[];
  /** Bytes from snapshots_offset to the end of the last entry (QEMU's snapshots_size). */
  size: number;
}

export interface ParseSnapshotOptions {
  /** Virtual size, the disk_size of entries without one. */
  virtualSize: number;
  /** Repair mode (qemu-img check -r all): truncate too-large extra data, drop overhanging entries. */
  repair?: boolean;
  onRepair?: (message: string) => void;
}

/** The one empty byte array shared by every entry without an ID, a name or unknown extra data. */
const NO_BYTES = new Uint8Array(0);

/**
 * Parse `nb` entries from `read(offset, length)` (synchronous access to the table bytes already
 * loaded). `read` must return zeros past the end of the file; it may return a view of a buffer
 * it reuses, so whatever is kept is copied.
 */
export function parseSnapshotTable(
  read: (offset: number, length: number) => Uint8Array,
  tableOffset: number,
  nb: number,
  opts: ParseSnapshotOptions,
): SnapshotTableResult {
  const snapshots: Snapshot[] = [];
  let offset = tableOffset;
  entriesDecoded(nb);
  for (let i = 0; i < nb; i++) {
    offset = alignUp(offset, 8);
    const entryOffset = offset;
    const h = read(offset, C.SNAPSHOT_HEADER_SIZE);
    offset += C.SNAPSHOT_HEADER_SIZE;
    let extraDataSize = be32(h, 36);
    const idSize = be16(h, 12);
    const nameSize = be16(h, 14);
    if (extraDataSize > C.MAX_SNAPSHOT_EXTRA_DATA) {
      if (!opts.repair) {
        throw new QcowError('SNAPSHOT_TABLE_INVALID', `Too much extra metadata in snapshot table entry ${i}`, {
          structure: 'snapshot table', offset: entryOffset, index: i, extraDataSize,
          hint: 'You can force-remove this extra metadata with qemu-img check -r all',
        });
      }
      opts.onRepair?.(`Discarding too much extra metadata in snapshot table entry ${i} (${extraDataSize} > ${C.MAX_SNAPSHOT_EXTRA_DATA})`);
    }
    const keptExtra = Math.min(extraDataSize, C.MAX_SNAPSHOT_EXTRA_DATA);
    const known = read(offset, Math.min(C.SNAPSHOT_EXTRA_KNOWN, keptExtra));
    let vmStateSize = be32(h, 32);
    if (keptExtra >= 8) vmStateSize = be64(known, 0);
    const diskSize = keptExtra >= 16 ? be64(known, 8) : opts.virtualSize;
    let icount = -1;
    if (keptExtra >= 24) {
      const hiw = be32(known, 16);
      const low = be32(known, 20);
      icount = hiw === 0xffffffff && low === 0xffffffff ? -1 : hiw * 4294967296 + low;
    }
    const unknownExtraData = keptExtra > C.SNAPSHOT_EXTRA_KNOWN ? read(offset + C.SNAPSHOT_EXTRA_KNOWN, keptExtra - C.SNAPSHOT_EXTRA_KNOWN).slice() : NO_BYTES;
    offset += extraDataSize; // the whole stored extra data is skipped, even when truncated
    if (extraDataSize > C.MAX_SNAPSHOT_EXTRA_DATA) extraDataSize = C.MAX_SNAPSHOT_EXTRA_DATA;
    const idBytes = idSize > 0 ? read(offset, idSize).slice() : NO_BYTES;
    offset += idSize;
    const nameBytes = nameSize > 0 ? read(offset, nameSize).slice() : NO_BYTES;
    offset += nameSize;
    if (offset - tableOffset > C.MAX_SNAPSHOTS_SIZE) {
      if (!opts.repair) {
        throw new QcowError('SNAPSHOT_TABLE_INVALID', 'Snapshot table is too big', {
          structure: 'snapshot table', offset: tableOffset, index: i,
          hint: `You can force-remove all ${nb - i} overhanging snapshots with qemu-img check -r all`,
        });
      }
      opts.onRepair?.(`Discarding ${nb - i} overhanging snapshots (snapshot table is too big)`);
      offset = entryOffset;
      break;
    }
    snapshots.push({
      l1TableOffset: be64(h, 0),
      l1Size: be32(h, 8),
      idStr: decodeString(idBytes),
      name: decodeString(nameBytes),
      idBytes,
      nameBytes,
      dateSec: be32(h, 16),
      dateNsec: be32(h, 20),
      vmClockNsec: be64(h, 24),
      vmStateSize,
      extraDataSize,
      diskSize,
      icount,
      unknownExtraData,
      entryOffset,
    });
  }
  return { snapshots, size: snapshots.length === 0 ? 0 : offset - tableOffset };
}

/** Size of the table QEMU would write for these entries (no trailing pad). */
export function snapshotTableSize(snapshots: readonly Snapshot[]): number {
  let size = 0;
  for (const sn of snapshots) {
    size = alignUp(size, 8);
    size += C.SNAPSHOT_HEADER_SIZE + C.SNAPSHOT_EXTRA_KNOWN + sn.unknownExtraData.length + sn.idBytes.length + sn.nameBytes.length;
  }
  return size;
}

/** Encode the whole table as QEMU writes it. */
export function encodeSnapshotTable(snapshots: readonly Snapshot[]): Uint8Array {
  const out = new Uint8Array(snapshotTableSize(snapshots));
  let pos = 0;
  for (const sn of snapshots) {
    pos = alignUp(pos, 8);
    put64(out, pos, sn.l1TableOffset);
    put32(out, pos + 8, sn.l1Size);
    put16(out, pos + 12, sn.idBytes.length);
    put16(out, pos + 14, sn.nameBytes.length);
    put32(out, pos + 16, sn.dateSec);
    put32(out, pos + 20, sn.dateNsec);
    put64(out, pos + 24, sn.vmClockNsec);
    put32(out, pos + 32, sn.vmStateSize <= 0xffffffff ? sn.vmStateSize : 0);
    put32(out, pos + 36, C.SNAPSHOT_EXTRA_KNOWN + sn.unknownExtraData.length);
    pos += C.SNAPSHOT_HEADER_SIZE;
    put64(out, pos, sn.vmStateSize);
    put64(out, pos + 8, sn.diskSize);
    if (sn.icount < 0) {
      put32(out, pos + 16, 0xffffffff);
      put32(out, pos + 20, 0xffffffff);
    } else {
      put64(out, pos + 16, sn.icount);
    }
    pos += C.SNAPSHOT_EXTRA_KNOWN;
    out.set(sn.unknownExtraData, pos);
    pos += sn.unknownExtraData.length;
    out.set(sn.idBytes, pos);
    pos += sn.idBytes.length;
    out.set(sn.nameBytes, pos);
    pos += sn.nameBytes.length;
  }
  return out;
}

export function makeSnapshot(fields: {
  l1TableOffset: number; l1Size: number; idStr: string; name: string; dateSec: number; dateNsec: number;
  vmClockNsec?: number; vmStateSize?: number; diskSize: number; icount?: number;
}): Snapshot {
  return {
    l1TableOffset: fields.l1TableOffset,
    l1Size: fields.l1Size,
    idStr: fields.idStr,
    name: fields.name,
    idBytes: encodeString(fields.idStr),
    nameBytes: encodeString(fields.name),
    dateSec: fields.dateSec,
    dateNsec: fields.dateNsec,
    vmClockNsec: fields.vmClockNsec ?? 0,
    vmStateSize: fields.vmStateSize ?? 0,
    extraDataSize: C.SNAPSHOT_EXTRA_KNOWN,
    diskSize: fields.diskSize,
    icount: fields.icount ?? 0,
    unknownExtraData: new Uint8Array(0),
    entryOffset: 0,
  };
}
