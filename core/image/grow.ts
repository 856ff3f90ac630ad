// Growing an image's virtual disk as QEMU's qcow2_co_truncate does for a larger size with
// preallocation off (what `qemu-img commit` does first to a backing file smaller than the
// overlay): the active L1 table grows to the exact length the new size needs (qcow2_grow_l1_table:
// a zeroed copy of 512-byte-aligned length in the first free clusters), then the header takes the
// new size. Crash-safe by order: the new L1 table is written and flushed before one header write
// (bytes 24..48: size, and the L1 table's length and offset, all in sector 0) publishes it, and the
// old table is freed only after that: a crash leaves at worst a leaked cluster.
import { QcowError } from '../errors.ts';
import { alignUp, put32, put64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { sizeToL1 } from '../format/header.ts';
import { allocClusters, freeClusters, noteMetadata } from './allocator.ts';
import type { Qcow2Image } from './qcow2-image.ts';

/** Grow `img`'s virtual disk to `size` bytes (a multiple of 512, not below the current size). */
export async function growImage(img: Qcow2Image, size: number): Promise<void> {
  const h = img.header;
  if (size === h.size) return;
  if (size < h.size || size % 512 !== 0) throw new QcowError('INVALID_ARGUMENT', `Cannot grow the image to ${size} bytes`, { size });
  if (h.nbSnapshots > 0 && h.version < 3) {
    throw new QcowError('NOT_SUPPORTED', "Can't resize a v2 image which has snapshots", { reason: 'v2-resize', image: img.store.name });
  }
  const cs = img.clusterSize;
  const l1Size = sizeToL1(h, size);
  if (l1Size * 8 > C.MAX_L1_SIZE_BYTES) throw new QcowError('TABLE_TOO_LARGE', 'Active L1 table too large', { structure: 'Active L1 table', size });
  let l1Offset = h.l1TableOffset;
  let l1Table = img.l1Table;
  const oldOffset = h.l1TableOffset;
  const oldBytes = h.l1Size * 8;
  if (l1Size > h.l1Size) {
    const bytes = alignUp(l1Size * 8, 512);
    l1Table = new Uint8Array(bytes);
    l1Table.set(img.l1Table.subarray(0, oldBytes));
    l1Offset = await allocClusters(img, Math.ceil(bytes / cs), 'active L1 table');
    noteMetadata(img, l1Offset, bytes, 'active L1 table');
    await img.pwrite(l1Offset, l1Table, `active L1 table, grown to ${l1Size} entries`);
    await img.flush('grown L1 table before the header points at it');
    l1Table = l1Table.slice(0, l1Size * 8);
  }
  const b = new Uint8Array(48);
  put64(b, 24, size);
  put32(b, 32, h.cryptMethod);
  put32(b, 36, Math.max(l1Size, h.l1Size));
  put64(b, 40, l1Offset);
  await img.pwrite(24, b.slice(24), `header: virtual size ${size}${l1Offset !== oldOffset ? ' and the grown L1 table' : ''}`, true);
  await img.flush('new size durable');
  img.setTables({ header: { size, l1Size: Math.max(l1Size, h.l1Size), l1TableOffset: l1Offset }, l1Table });
  if (l1Offset !== oldOffset && oldBytes > 0) await freeClusters(img, oldOffset, oldBytes);
}
