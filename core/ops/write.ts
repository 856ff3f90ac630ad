// Guest writes as an operation (qemu-io's write -P, write -z [-u], discard, and a write of given
// bytes), in bounded chunks, ending with a flush, and with the journal of what was written.
import { Journal } from '../image/journal.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { discard, writeGuest, writeZeroes } from '../image/write.ts';

/** Guest bytes written per call when filling a pattern or copying (bounds memory for big writes). */
const CHUNK = 16 * 1024 * 1024;

export type GuestWriteRequest =
  /** `length` bytes of one byte value (qemu-io write -P). */
  | { kind: 'pattern'; offset: number; length: number; pattern: number }
  /** `length` bytes read from a source, chunk by chunk: `read(pos, n)` gives bytes pos..pos+n of it. */
  | { kind: 'data'; offset: number; length: number; read: (pos: number, n: number) => Uint8Array | Promise<Uint8Array> }
  /** qemu-io write -z [-u]. */
  | { kind: 'zeroes'; offset: number; length: number; unmap?: boolean }
  /** qemu-io discard. */
  | { kind: 'discard'; offset: number; length: number };

/**
 * Run `req` on an image opened writable; with `journal` (the operation's description) every write
 * and flush is recorded and the journal returned, else null.
 */
export async function guestWrite(img: Qcow2Image, req: GuestWriteRequest, opts: { journal?: string } = {}): Promise<Journal | null> {
  const journal = opts.journal !== undefined ? new Journal(opts.journal) : null;
  const prev = img.journal;
  img.journal = journal;
  try {
    if (req.kind === 'discard') {
      await discard(img, req.offset, req.length);
    } else if (req.kind === 'zeroes') {
      await writeZeroes(img, req.offset, req.length, { unmap: !!req.unmap });
    } else if (req.kind === 'data') {
      for (let pos = 0; pos < req.length;) {
        const n = Math.min(CHUNK, req.length - pos);
        await writeGuest(img, req.offset + pos, await req.read(pos, n));
        pos += n;
      }
    } else {
      const buf = new Uint8Array(Math.min(CHUNK, req.length)).fill(req.pattern);
      for (let pos = 0; pos < req.length;) {
        const n = Math.min(CHUNK, req.length - pos);
        await writeGuest(img, req.offset + pos, n === buf.length ? buf : buf.subarray(0, n));
        pos += n;
      }
    }
    await img.flush('end of write');
  } finally {
    img.journal = prev;
  }
  return journal;
}
