// Big-endian field access and the safe arithmetic qcow2 needs: JavaScript's bitwise operators are
// 32-bit, so 64-bit fields are read as two u32 halves or as bigint and converted in one place.

export function be16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

export function be32(b: Uint8Array, off: number): number {
  return ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
}

/** u64 as a number: exact below 2^53, approximate (but ordered) above. */
export function be64(b: Uint8Array, off: number): number {
  return be32(b, off) * 4294967296 + be32(b, off + 4);
}

export function be64n(b: Uint8Array, off: number): bigint {
  return (BigInt(be32(b, off)) << 32n) | BigInt(be32(b, off + 4));
}

export function put16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

export function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 24) & 0xff;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

/** Write a u64 given as a non-negative safe integer. */
export function put64(b: Uint8Array, off: number, v: number): void {
  put32(b, off, Math.floor(v / 4294967296));
  put32(b, off + 4, v % 4294967296);
}

export function put64n(b: Uint8Array, off: number, v: bigint): void {
  put32(b, off, Number((v >> 32n) & 0xffffffffn));
  put32(b, off + 4, Number(v & 0xffffffffn));
}

/** The one place a u64 bigint becomes a number; callers have checked it is below 2^53. */
export function toNumber(v: bigint): number {
  return Number(v);
}

export function isSafe(v: bigint): boolean {
  return v <= BigInt(Number.MAX_SAFE_INTEGER);
}

/** C's `%#x`, as QEMU prints offsets and indices in its messages: "0" for zero, else "0x…". */
export function qemuHex(n: number | bigint): string {
  return n === 0 || n === 0n ? '0' : '0x' + n.toString(16);
}

/** Round up to a multiple of `a` (any positive integer), exact for offsets above 2^32. */
export function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

const utf8 = new TextDecoder('utf-8');
const utf8enc = new TextEncoder();

export function decodeString(b: Uint8Array): string {
  return utf8.decode(b);
}

export function encodeString(s: string): Uint8Array {
  return utf8enc.encode(s);
}

/** A C string in a fixed field: up to the first NUL. */
export function decodeCString(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return utf8.decode(nul >= 0 ? b.subarray(0, nul) : b);
}
