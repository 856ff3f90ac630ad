// Fast byte-array comparison for tests. Vitest's toEqual walks typed arrays element by element
// (seconds for a few hundred KiB); this compares with Buffer.compare and, on a mismatch, describes
// the first difference so the failure message stays short and useful.
import { expect } from 'vitest';

/** '' when equal, else a one-line description of the first difference. */
export function bytesDiff(actual: Uint8Array, expected: Uint8Array): string {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.length === b.length && a.equals(b)) return '';
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  const at = (x: Buffer) => x.subarray(i, Math.min(x.length, i + 16)).toString('hex');
  return `length ${a.length} vs expected ${b.length}; first difference at byte ${i} (0x${i.toString(16)}): ${at(a) || '<end>'} vs expected ${at(b) || '<end>'}`;
}

/** Assert two byte arrays are equal (fast; short message on failure). */
export function expectBytes(actual: Uint8Array, expected: Uint8Array, message?: string): void {
  expect(bytesDiff(actual, expected), message).toBe('');
}
