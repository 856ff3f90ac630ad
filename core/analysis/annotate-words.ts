// The value of an annotated field or bit range in plain words ("host offset 0x50000, host
// cluster 5", "set: the refcount is exactly one"), by what the field holds (its role in
// core/format/layouts.ts).
import type { BitLayout, FieldLayout } from '../format/layouts.ts';
import type { Qcow2Header } from '../format/header.ts';
import { sizeToStr } from './info.ts';

export interface WordsContext {
  clusterSize: number;
  header: Qcow2Header | null;
  refcountBits: number;
  /** Refcount blocks: the host cluster whose refcount the item (or its first bit range) is. */
  firstCluster?: number;
}

const grouped = (n: bigint): string => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');

function bytesWords(n: bigint): string {
  const s = `${grouped(n)} byte${n === 1n ? '' : 's'}`;
  return n >= 1024n && n <= BigInt(Number.MAX_SAFE_INTEGER) ? `${s} (${sizeToStr(Number(n))})` : s;
}

function offsetWords(n: bigint, ctx: WordsContext): string {
  if (n === 0n) return '0: none (unallocated)';
  const cs = BigInt(ctx.clusterSize);
  const within = n % cs;
  return `host offset 0x${n.toString(16)}, ${within === 0n ? `the start of host cluster ${n / cs}` : `byte ${within} of host cluster ${n / cs}`}`;
}

function valueWords(name: string, role: FieldLayout['role'], v: bigint, ctx: WordsContext, values?: Record<number, string>): string {
  switch (role) {
    case 'magic': return v === 0x514649fbn ? '"QFI\\xfb": a qcow image' : `0x${v.toString(16)}: not the qcow magic`;
    case 'version': return v === 3n ? 'version 3 (compat=1.1)' : v === 2n ? 'version 2 (compat=0.10)' : `version ${v}, unknown`;
    case 'offset': return offsetWords(v, ctx);
    case 'count': return v === 0xffffffffffffffffn ? 'all ones: not recorded' : `${grouped(v)}`;
    case 'bytes': return bytesWords(v);
    case 'log2':
      return name === 'refcount_order' ? `${2n ** v}-bit refcounts (2^${v})` :
        name === 'granularity_bits' ? `one bit per ${bytesWords(2n ** v)} of the guest disk` : `clusters of ${bytesWords(2n ** v)} (2^${v})`;
    case 'seconds': return v <= 8640000000000n ? `${new Date(Number(v) * 1000).toISOString().replace('.000Z', ' UTC').replace('T', ' ')}` : `${v} seconds`;
    case 'nanoseconds': return `${grouped(v)} ns (${(Number(v) / 1e9).toFixed(3)} s)`;
    case 'enum': case 'type': return values?.[Number(v)] ?? `${v}: unknown`;
    case 'refcount':
      return `${ctx.firstCluster !== undefined ? `host cluster ${ctx.firstCluster} ` : ''}is referenced ${v === 0n ? '0 times: free' : v === 1n ? 'once' : `${v} times`}`;
    case 'sectors': return `${v} (the compressed data spans ${v + 1n} sector${v === 0n ? '' : 's'} of 512 bytes)`;
    case 'reserved': return v === 0n ? 'zero, as it must be' : `0x${v.toString(16)}: reserved bits set, which the spec forbids`;
    case 'features': {
      return v === 0n ? 'none set' : `bits set: 0x${v.toString(16)}`;
    }
    case 'bitmap': {
      const set = Array.from({ length: 32 }, (_, k) => k).filter((k) => ((v >> BigInt(k)) & 1n) === 1n);
      return set.length === 0 ? 'no subcluster' : set.length === 32 ? 'all 32 subclusters' : `subclusters ${set.join(', ')}`;
    }
    default: return `0x${v.toString(16)}`;
  }
}

/** A whole field's value in words. */
export function fieldWords(f: FieldLayout, v: bigint | string | Uint8Array, ctx: WordsContext): string {
  if (typeof v === 'string') return `“${v}” (${f.size} bytes)`;
  if (v instanceof Uint8Array) {
    const zero = v.every((x) => x === 0);
    return f.role === 'reserved' ? (zero ? 'zeros, as they must be' : 'not all zeros') : `${v.length} bytes${zero ? ', all zeros' : ''}`;
  }
  if (f.bits && f.role !== 'bitmap') {
    const bit = (b: BitLayout) => (v >> BigInt(b.lsb)) & ((1n << BigInt(b.width)) - 1n);
    const set = f.bits.filter((b) => b.width === 1 && b.role === 'flag' && bit(b) === 1n).map((b) => b.name);
    const flags = set.length ? `set: ${set.join(', ')}` : 'no flag set';
    if (f.role === 'features') {
      const named = f.bits.filter((b) => b.role === 'flag').reduce((m, b) => m | (1n << BigInt(b.lsb)), 0n);
      const unknown = v & ~named;
      return v === 0n ? 'none set' : [set.length ? flags : '', unknown ? `unknown bits 0x${unknown.toString(16)}` : ''].filter(Boolean).join('; ');
    }
    // a table entry: its wider ranges (offsets, counts) in words, then its flags
    const wide = f.bits.filter((b) => b.width > 1 && b.role !== 'reserved' && b.role !== 'refcount').map((b) => `${b.name}: ${bitWords(b, bit(b), ctx)}`);
    const refcounts = f.bits.filter((b) => b.role === 'refcount').map((b) => bitWords(b, bit(b), ctx));
    const reserved = f.bits.some((b) => b.role === 'reserved' && bit(b) !== 0n) ? '; reserved bits set, which the spec forbids' : '';
    return refcounts.length ? refcounts.join('; ') : `${[...wide, flags].join('; ')}${reserved}`;
  }
  return valueWords(f.name, f.role, v, ctx, f.values);
}

/** A bit range's value in words. */
export function bitWords(b: BitLayout, v: bigint, ctx: WordsContext): string {
  if (b.role === 'flag') return v === 1n ? 'set' : 'clear';
  if (b.role === 'refcount' && ctx.firstCluster !== undefined) {
    return valueWords(b.name, 'refcount', v, { ...ctx, firstCluster: ctx.firstCluster + b.lsb / ctx.refcountBits });
  }
  // an offset range keeps its place in the entry: bits 9-55 hold the offset itself, not offset >> 9
  return valueWords(b.name, b.role, b.role === 'offset' ? v << BigInt(b.lsb) : v, ctx);
}
