// The pre-check of a writing snapshot operation (create, revert, delete, and each image of a
// group), and its constant-time part for every guest write: the structures the operation must trust are whole and inside the file, or it is refused
// before anything is read for planning or written. Those structures are the snapshot table (every
// entry complete), every snapshot's L1 table and the active L1 table (cluster-aligned, inside the
// file) and the refcount table and its blocks (inside the file, aligned). QEMU creates a snapshot
// on such an image anyway; `qemu-img check` calls it corrupt, and so do we. The message names the
// structure and its offset and says to run check; `check -r all` repairs what it can.
import { QcowError, hex } from '../errors.ts';
import * as C from '../format/constants.ts';
import { reftableEntry, usedReftableIndices } from '../format/refcount.ts';
import type { Snapshot } from '../format/snapshot-table.ts';
import { refcountStructureOverlap } from './metadata.ts';
import type { Qcow2Image } from './qcow2-image.ts';

/** Throw a one-line refusal naming the first damaged structure the operation `what` must trust. */
export function precheckSnapshotOp(img: Qcow2Image, what: string): void {
  const damage = findWriteDamage(img);
  if (damage) refuse(img, what, damage);
}

export interface WriteDamage {
  structure: string;
  offset: number;
  message: string;
}

/**
 * The first damaged structure a write must trust, in the order an operation relies on them (the
 * web app opens such an image read-only, with this as the reason).
 */
export function findWriteDamage(img: Qcow2Image): WriteDamage | undefined {
  return snapshotTableDamage(img) ?? l1Damage(img) ?? refcountDamage(img);
}

/**
 * The structures every guest write goes through, checked in constant time (a guest write may be
 * one of many): the active L1 table and the refcount table whole inside the file, the L1 table
 * cluster-aligned. A write through an L1 table past the end would write its entries there (the
 * fuzz campaign of seed 20261206: an L1 moved 4 GiB past the end grew the file to 4 GiB).
 */
export function precheckGuestWrite(img: Qcow2Image): void {
  const fileSize = img.store.size();
  const h = img.header;
  const l1 = h.l1TableOffset % img.clusterSize !== 0 ? 'is not cluster-aligned'
    : h.l1Size > 0 && h.l1TableOffset + h.l1Size * 8 > fileSize ? `runs past the end of the file (${hex(fileSize)})` : undefined;
  const damage: WriteDamage | undefined = l1
    ? { structure: 'active L1 table', offset: h.l1TableOffset, message: `Active L1 table offset invalid: the active L1 table at ${hex(h.l1TableOffset)} ${l1}` }
    : h.refcountTableOffset + h.refcountTableClusters * img.clusterSize > fileSize
      ? { structure: 'refcount table', offset: h.refcountTableOffset, message: `the refcount table at ${hex(h.refcountTableOffset)} runs past the end of the file (${hex(fileSize)})` }
      : undefined;
  if (damage) refuse(img, 'write', damage);
}

function refuse(img: Qcow2Image, what: string, damage: WriteDamage): never {
  throw new QcowError('METADATA_CORRUPT', `Cannot ${what}: ${damage.message}; run 'check' on ${img.store.name} (check -r all repairs what it can)`, {
    structure: damage.structure, offset: damage.offset, image: img.store.name, reason: 'precheck',
  });
}

function snapshotTableDamage(img: Qcow2Image): WriteDamage | undefined {
  const fileSize = img.store.size();
  const list = img.snapshots;
  const tableEnd = img.header.snapshotsOffset + img.snapshotsSize;
  if (list.length === 0 || tableEnd <= fileSize) return undefined;
  // the first entry whose bytes (its padding to 8 aside) do not all lie inside the file
  for (let i = 0; i < list.length; i++) {
    const sn = list[i]!;
    const end = sn.entryOffset + C.SNAPSHOT_HEADER_SIZE + sn.extraDataSize + sn.idBytes.length + sn.nameBytes.length;
    if (end > fileSize) {
      const at = sn.entryOffset;
      return {
        structure: 'snapshot table', offset: at,
        message: `snapshot table entry ${i} at ${hex(at)} is incomplete (the file ends at ${hex(fileSize)})`,
      };
    }
  }
  return undefined;
}

function l1Damage(img: Qcow2Image): WriteDamage | undefined {
  const fileSize = img.store.size();
  const cs = img.clusterSize;
  const h = img.header;
  const bad = (offset: number, size: number): string | undefined => {
    if (offset % cs !== 0) return 'is not cluster-aligned';
    if (size > 0 && offset + size > fileSize) return `runs past the end of the file (${hex(fileSize)})`;
    return undefined;
  };
  const active = bad(h.l1TableOffset, h.l1Size * 8);
  // QEMU's words first (qcow2_validate_table: "<table> offset invalid" / "<table> too large"), then where
  if (active) return { structure: 'active L1 table', offset: h.l1TableOffset, message: `Active L1 table offset invalid: the active L1 table at ${hex(h.l1TableOffset)} ${active}` };
  for (const sn of img.snapshots) {
    const tooLarge = sn.l1Size * 8 > C.MAX_L1_SIZE_BYTES;
    const why = tooLarge ? 'is too large' : bad(sn.l1TableOffset, sn.l1Size * 8);
    if (why) {
      const qemu = tooLarge ? 'Snapshot L1 table too large' : 'Snapshot L1 table offset invalid';
      return { structure: 'snapshot L1 table', offset: sn.l1TableOffset, message: `${qemu}: ${describe(sn)}'s L1 table at ${hex(sn.l1TableOffset)} ${why}` };
    }
  }
  return undefined;
}

function describe(sn: Snapshot): string {
  return `snapshot ${sn.idStr} ('${sn.name}')`;
}

function refcountDamage(img: Qcow2Image): WriteDamage | undefined {
  const fileSize = img.store.size();
  const cs = img.clusterSize;
  const h = img.header;
  const tableBytes = h.refcountTableClusters * cs;
  if (h.refcountTableOffset + tableBytes > fileSize) {
    return {
      structure: 'refcount table', offset: h.refcountTableOffset,
      message: `the refcount table at ${hex(h.refcountTableOffset)} runs past the end of the file (${hex(fileSize)})`,
    };
  }
  for (const i of usedReftableIndices(img.reftable)) {
    const off = reftableEntry(img.reftable, i);
    if (off === 0) continue;
    const why = off % cs !== 0 ? 'is not cluster-aligned' : off + cs > fileSize ? `lies past the end of the file (${hex(fileSize)})` : undefined;
    if (why) {
      return { structure: 'refcount block', offset: off, message: `refcount block ${i} at ${hex(off)} ${why}` };
    }
  }
  // On other metadata, its "refcounts" are that structure's bytes: an allocation trusting them
  // lands anywhere (QEMU's snapshot writes 8 GiB past the end of such a file).
  const o = refcountStructureOverlap(img);
  if (o) {
    const what = o.structure === 'refcount table' ? 'the refcount table' : `refcount block ${o.index}`;
    return { structure: o.structure, offset: o.offset, message: `${what} at ${hex(o.offset)} overlaps with ${o.owner}` };
  }
  return undefined;
}
