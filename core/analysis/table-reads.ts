// Batched table reads for the reference walk: many L1/L2/refcount tables read in large coalesced
// reads (up to BATCH_BYTES) into one reused buffer, handed out in the caller's order.
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { readInto } from '../io/store.ts';
import { entriesDecoded } from '../work-count.ts';
// ---- batched table reads ---------------------------------------------------------------------------

/** Largest single read when loading many tables: 4 MiB (docs/platform.md: big reads are what browsers do well). */
export const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * The read buffer of one job's table scans (tablesInOrder), grown on demand, so that the scans
 * that follow one another touch the same memory. One scan at a time may use it.
 */
export class ReadBuffer {
  private buf = new Uint8Array(0);

  /** `bytes` bytes of the buffer (their contents are whatever the last scan left). */
  take(bytes: number): Uint8Array {
    if (this.buf.length < bytes) this.buf = new Uint8Array(bytes);
    return this.buf.subarray(0, bytes);
  }
}

/**
 * Yield the tables at `offsets` (each `tableSize` bytes, any alignment), in the given order, after
 * reading them in coalesced batches of at most BATCH_BYTES. Offsets at or past the end of the file
 * (or beyond what a number holds exactly) read as zeros without I/O, as QEMU's reads past EOF do.
 *
 * Every batch is read into the same buffer, `buffer`'s: a table yielded is valid until the next
 * one is asked for, so callers that keep one must copy it. (Fresh memory for every batch was most
 * of the check's time: touching a new page costs more than reading it from the page cache.)
 */
export async function* tablesInOrder(
  img: Qcow2Image, offsets: readonly number[], tableSize: number, buffer = new ReadBuffer(),
): AsyncGenerator<[number, Uint8Array]> {
  const fileSize = img.store.size();
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / tableSize));
  const scratch = buffer.take(Math.min(offsets.length, perBatch) * tableSize);
  const zero = new Uint8Array(tableSize);
  const at = new Map<number, number>(); // table offset -> its place in the scratch buffer
  for (let start = 0; start < offsets.length; start += perBatch) {
    const end = Math.min(offsets.length, start + perBatch);
    const uniq = Array.from(new Set(offsets.slice(start, end))).filter((o) => o < fileSize && o + tableSize <= Number.MAX_SAFE_INTEGER).sort((a, b) => a - b);
    at.clear();
    let used = 0;
    let i = 0;
    while (i < uniq.length) {
      let j = i + 1;
      while (j < uniq.length && uniq[j] === uniq[j - 1]! + tableSize) j++;
      await readInto(img.store, uniq[i]!, scratch.subarray(used, used + (j - i) * tableSize));
      for (let k = i; k < j; k++, used += tableSize) at.set(uniq[k]!, used);
      i = j;
    }
    entriesDecoded(((end - start) * tableSize) / 8);
    for (let k = start; k < end; k++) {
      const p = at.get(offsets[k]!);
      yield [k, p === undefined ? zero : scratch.subarray(p, p + tableSize)];
    }
  }
}
