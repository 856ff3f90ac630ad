// The read budget of a worker job that walks an image's metadata (check, repair, cluster map, diff,
// snapshot space, raw export): a
// store wrapper that counts the bytes the job reads and stops it with a one-line QcowError
// ('WORK_BUDGET') once they exceed a stated function of what the image declares, so a hostile
// image ends in an error in the view instead of a job that reads on and on. The budget:
//   READ_FACTOR · declared + READ_CONSTANT, where
//   declared = one cluster (header) + active L1 + refcount table + snapshot table
//            + every snapshot's L1 table + one cluster per possible L2 table (non-zero active L1
//              entries, and every entry of each snapshot's L1, whose contents are not loaded)
//            + one cluster per non-zero refcount table entry (a refcount block each).
// A check reads each of these once or twice (a repair: a few passes); prefetching reads go to the
// store below (its cache), and are charged when the engine reads them. A raw export also reads
// guest data: its budget adds twice the file's size (each host cluster read once, compressed
// clusters at most twice), so tables that name the same clusters over and over stop it. A repair
// adds the file's size once (it reads the leaked clusters it frees, to empty them as QEMU does).
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import { ForwardingStore } from '../core/io/forwarding-store.ts';
import type { Qcow2Image } from '../core/image/qcow2-image.ts';

export const READ_FACTOR = 8;
export const READ_CONSTANT = 64 * 1024 * 1024;

/** Non-zero 8-byte entries of a loaded table. */
function nonZero(table: Uint8Array): number {
  let n = 0;
  const dv = new DataView(table.buffer, table.byteOffset, table.length - (table.length % 8));
  for (let p = 0; p + 8 <= dv.byteLength; p += 8) if (dv.getUint32(p) !== 0 || dv.getUint32(p + 4) !== 0) n++;
  return n;
}

/** The metadata bytes `img` declares (see the file comment). */
export function declaredMetadataBytes(img: Qcow2Image): number {
  const cs = img.clusterSize;
  let bytes = cs + img.l1Table.length + img.reftable.length + img.snapshotsSize;
  let l2Tables = nonZero(img.l1Table);
  for (const sn of img.snapshots) {
    bytes += sn.l1Size * 8;
    l2Tables += sn.l1Size;
  }
  return bytes + (l2Tables + nonZero(img.reftable)) * cs;
}

/** A store that charges every read to one job's budget (writes, flushes pass through). */
export class BudgetedStore extends ForwardingStore {
  bytesRead = 0;
  /** Bytes the job may read; Infinity until `setBudget` (the open that tells what is declared). */
  private limit = Infinity;
  private declared = 0;
  private extra = 0;

  constructor(inner: ImageStore, private readonly what: string) {
    super(inner);
  }

  /** From now on, at most READ_FACTOR · declared + `extra` + READ_CONSTANT bytes in all (reads so far count). */
  setBudget(img: Qcow2Image, extra = 0): void {
    this.declared = declaredMetadataBytes(img);
    this.extra = extra;
    this.limit = READ_FACTOR * this.declared + extra + READ_CONSTANT;
    this.charge(0);
  }

  private charge(n: number): void {
    this.bytesRead += n;
    if (this.bytesRead <= this.limit) return;
    const mib = (b: number) => (b / 1048576).toFixed(1);
    const data = this.extra ? ` and ${mib(this.extra)} MiB of data` : '';
    throw new QcowError('WORK_BUDGET', `The ${this.what} was stopped: it read ${mib(this.bytesRead)} MiB, more than ${READ_FACTOR} times the ${mib(this.declared)} MiB of metadata this image declares${data} plus ${mib(READ_CONSTANT)} MiB`, {
      bytesRead: this.bytesRead, limit: this.limit, declared: this.declared,
    });
  }

  override read(offset: number, length: number): Promise<Uint8Array> {
    this.charge(length);
    return this.inner.read(offset, length);
  }

  async readInto(offset: number, out: Uint8Array): Promise<void> {
    this.charge(out.length);
    if (this.inner.readInto) await this.inner.readInto(offset, out);
    else out.set(await this.inner.read(offset, out.length));
  }

  /** Prefetching (when the store below has it) is not charged: the reads it serves are. */
  prefetch(ranges: Array<[number, number]>, signal?: AbortSignal): Promise<void> {
    const p = (this.inner as Partial<{ prefetch(r: Array<[number, number]>, s?: AbortSignal): Promise<void> }>).prefetch;
    return p ? p.call(this.inner, ranges, signal) : Promise.resolve();
  }
}

/**
 * `img` opened afresh for one job on a BudgetedStore over its store (check mode, so damaged
 * images a check can read are read; `img`'s backing layer below), so the job's reads stop at its
 * budget. `extra` adds to the budget (a raw export's data). Not closed after the job: closing it
 * would close `img`'s store below it (the cluster map does the same).
 */
export async function openBudgeted(
  img: Qcow2Image, what: string, open: (store: ImageStore, backing: Qcow2Image['backing']) => Promise<Qcow2Image>, extra = 0,
): Promise<Qcow2Image> {
  const budgeted = new BudgetedStore(img.store, what);
  const c = await open(budgeted, img.backing);
  budgeted.setBudget(c, extra);
  return c;
}
