// Step 1 of the check: the snapshot table (QEMU's qcow2_check_read_snapshot_table and, when
// repairing, qcow2_write_snapshots): read it with QEMU's repairs, discard overhanging or
// incomplete entries, and rewrite it in freshly allocated clusters.
import { QcowError } from '../errors.ts';
import { put32 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { validateTable } from '../format/header.ts';
import { encodeSnapshotTable, snapshotTableSize } from '../format/snapshot-table.ts';
import { allocClusters, freeClusters } from '../image/allocator.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { CheckAbort, strerror, type CheckCounters, type FindingSink } from './findings.ts';
import { preWriteOverlapCheck } from './rebuild.ts';
export async function checkReadSnapshotTable(img: Qcow2Image, res: CheckCounters, fixErrors: boolean, sink: FindingSink): Promise<void> {
  const h = img.header;
  let nb = h.nbSnapshots;
  const off = h.snapshotsOffset;
  let reduced = 0;
  if (nb > C.MAX_SNAPSHOTS && fixErrors) {
    sink.add({ kind: 'info', message: `Discarding ${nb - C.MAX_SNAPSHOTS} overhanging snapshots`, structure: 'snapshot table' });
    reduced += nb - C.MAX_SNAPSHOTS;
    nb = C.MAX_SNAPSHOTS;
  }
  try {
    validateTable(off, nb, C.SNAPSHOT_HEADER_SIZE, C.SNAPSHOT_HEADER_SIZE * C.MAX_SNAPSHOTS, img.clusterSize, 'snapshot table', 64);
  } catch (e) {
    if (!(e instanceof QcowError)) throw e;
    res.checkErrors++;
    sink.add({ kind: 'check-error', message: `ERROR ${e.message}`, structure: 'snapshot table', hostOffset: off, reported: true });
    if (nb > C.MAX_SNAPSHOTS) sink.add({ kind: 'info', message: `You can force-remove all ${nb - C.MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all` });
    img.setTables({ snapshots: [], snapshotsSize: 0, header: { nbSnapshots: 0, snapshotsOffset: 0 } });
    throw new CheckAbort(e.code === 'TABLE_TOO_LARGE' ? 'EFBIG' : 'EINVAL');
  }
  img.setTables({ header: { nbSnapshots: nb } });
  const before = img.messages.length;
  try {
    await img.loadSnapshots(fixErrors);
  } catch (e) {
    if (!(e instanceof QcowError)) throw e;
    res.checkErrors++;
    sink.add({ kind: 'check-error', message: `ERROR failed to read the snapshot table: ${e.message}`, structure: 'snapshot table', hostOffset: off, reported: true });
    if (typeof e.details.hint === 'string') sink.add({ kind: 'info', message: e.details.hint });
    img.setTables({ snapshots: [], snapshotsSize: 0, header: { nbSnapshots: 0, snapshotsOffset: 0 } });
    throw new CheckAbort('EFBIG');
  }
  let extraDropped = 0;
  for (const m of img.messages.slice(before)) {
    sink.add({ kind: 'info', message: m, structure: 'snapshot table' });
    if (m.startsWith('Discarding too much extra metadata')) extraDropped++;
  }
  reduced += nb - img.snapshots.length;
  res.corruptions += reduced + extraDropped;
  if (reduced > 0) {
    // The header must agree with the table before the refcounts are checked (QEMU writes it now).
    const b = new Uint8Array(4);
    put32(b, 0, img.snapshots.length);
    await img.pwrite(60, b, 'header: nb_snapshots (overhanging snapshots discarded)', true);
    await img.flush('header commit');
    img.setTables({ header: { nbSnapshots: img.snapshots.length } });
    res.corruptionsFixed += reduced;
    res.corruptions -= reduced;
  }
  if (h.version >= 3) {
    img.snapshots.forEach((sn, i) => {
      if (sn.extraDataSize < 16) {
        res.corruptions++;
        sink.add({ kind: 'corruption', message: `${fixErrors ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`, structure: 'snapshot table', hostOffset: sn.entryOffset });
      }
    });
  }
}

/**
 * QEMU's qcow2_write_snapshots as the check uses it: a new table in freshly allocated clusters
 * (the engine's allocator: first fit, growing the refcount structures when needed), flushed, then
 * committed by the 12-byte header write at offset 60; the old table's clusters freed after.
 */
export async function rewriteSnapshotTable(img: Qcow2Image, onOverlap: (m: string) => void): Promise<void> {
  const size = snapshotTableSize(img.snapshots);
  if (size > C.MAX_SNAPSHOTS_SIZE) throw new QcowError('TABLE_TOO_LARGE', strerror('EFBIG'), {});
  const oldOffset = img.header.snapshotsOffset;
  const oldSize = img.snapshotsSize;
  // The check has just changed refcounts behind the allocator's back.
  img.allocation.forget();
  img.refblockCache.clear();
  let offset = 0;
  if (size > 0) {
    offset = await allocClusters(img, Math.ceil(size / img.clusterSize), 'snapshot table');
    await img.flush('snapshot table clusters allocated');
    const overlap = await preWriteOverlapCheck(img, offset, size);
    if (overlap) {
      onOverlap(overlap);
      throw new QcowError('IO_ERROR', strerror('EIO'), { errno: 'EIO' });
    }
    await img.pwrite(offset, encodeSnapshotTable(img.snapshots), 'snapshot table (rewritten)');
    await img.flush('snapshot table before the header points at it');
  }
  const b = new Uint8Array(12);
  put32(b, 0, img.snapshots.length);
  put32(b, 4, Math.floor(offset / 4294967296));
  put32(b, 8, offset % 4294967296);
  await img.pwrite(60, b, 'header: nb_snapshots and snapshots_offset', true);
  await img.flush('header commit');
  img.setTables({ header: { snapshotsOffset: offset }, snapshotsSize: size });
  try {
    await freeClusters(img, oldOffset, oldSize);
    await img.flush('old snapshot table freed');
  } catch (e) {
    // QEMU's qcow2_free_clusters only reports a failure: the old table is leaked.
    if (!(e instanceof QcowError)) throw e;
  }
  img.allocation.forget(); // the old table's clusters are free again
}

