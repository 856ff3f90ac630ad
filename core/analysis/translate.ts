// Address translation, step by step: a guest offset followed through L1 and L2 to its host
// cluster (or to zeros, the backing file, or a compressed cluster), each step with the numbers
// and the spec's words, for the teaching view and `qcowscope translate`.
import { QcowError, hex } from '../errors.ts';
import { be32 } from '../format/bytes.ts';
import { CLUSTER_TYPE_NAMES, ClusterType, clusterType, compressedDescriptor, decodeL1Entry, decodeL2Entry } from '../format/entries.ts';
import { Qcow2Image, type L1View } from '../image/qcow2-image.ts';
import { RawLayer, ownLayer } from '../image/layer.ts';
import { getClusterRefcount } from '../image/refcount.ts';

/**
 * Where the byte is. 'backing': in a backing layer this walk cannot look into; 'backing-missing':
 * the header names a backing file that is not attached.
 */
export type TranslationResult = 'data' | 'zero' | 'compressed' | 'backing' | 'backing-missing' | 'unallocated' | 'beyond-end' | 'error';

export interface TranslationStep {
  title: string;
  /** Plain-words explanation with the numbers filled in. */
  text: string;
  /** Host offset of the structure this step reads (for "show in hex / on the map"). */
  hostOffset?: number;
  raw?: string;
}

export interface Translation {
  guestOffset: number;
  clusterSize: number;
  l1Index: number;
  l2Index: number;
  offsetInCluster: number;
  l1EntryOffset?: number;
  l2Offset?: number;
  l2EntryOffset?: number;
  hostOffset?: number;
  /** Host cluster holding the byte, when there is one. */
  hostCluster?: number;
  refcount?: number;
  clusterType?: string;
  subcluster?: number;
  /** The layer that answers: 0 this image, 1 its backing file, and so on (qemu-img map's depth). */
  depth: number;
  /** The name of the file that answers, when it is a backing file (hostOffset is then in that file). */
  file?: string;
  /** The backing file the header names (set when it is not attached: result 'backing-missing'). */
  backingFile?: string;
  result: TranslationResult;
  steps: TranslationStep[];
  error?: string;
}

export async function translate(img: Qcow2Image, view: L1View, guestOffset: number): Promise<Translation> {
  if (!Number.isSafeInteger(guestOffset) || guestOffset < 0) {
    throw new QcowError('INVALID_ARGUMENT', `Guest offset ${guestOffset} is not a valid offset`, {});
  }
  const cs = img.clusterSize;
  const l2Span = img.l2Span;
  const l1Index = Math.floor(guestOffset / l2Span);
  const l2Index = Math.floor(guestOffset / cs) % img.l2Entries;
  const offsetInCluster = guestOffset % cs;
  const t: Translation = { guestOffset, clusterSize: cs, l1Index, l2Index, offsetInCluster, depth: 0, result: 'unallocated', steps: [] };
  const steps = t.steps;
  steps.push({
    title: 'Split the guest offset',
    text: `Guest offset ${hex(guestOffset)} with ${cs}-byte clusters and ${img.l2Entries} entries per L2 table: ` +
      `L1 index = offset / (${cs} × ${img.l2Entries}) = ${l1Index}, L2 index = (offset / ${cs}) mod ${img.l2Entries} = ${l2Index}, ` +
      `offset in cluster = ${hex(offsetInCluster)}.`,
  });
  if (guestOffset >= view.virtualSize) {
    t.result = 'beyond-end';
    steps.push({ title: 'Beyond the end of the disk', text: `The virtual disk is ${view.virtualSize} bytes long; this offset is past its end.` });
    return t;
  }
  if (l1Index >= view.size) {
    steps.push({ title: 'L1 entry', text: `L1 index ${l1Index} is past the L1 table (l1_size ${view.size}): unallocated.` });
    return await finishUnallocated(img, t);
  }
  const l1EntryOffset = view.offset + l1Index * 8;
  t.l1EntryOffset = l1EntryOffset;
  const l1e = decodeL1Entry(view.table, l1Index);
  steps.push({
    title: 'L1 entry',
    hostOffset: l1EntryOffset,
    raw: l1e.raw,
    text: `L1 table at ${hex(view.offset)}, entry ${l1Index} at ${hex(l1EntryOffset)} = 0x${l1e.raw}: ` +
      (l1e.l2Offset === 0 ? 'offset 0, so no L2 table is allocated for this range.'
        : `bits 9–55 give the L2 table offset ${hex(l1e.l2Offset)}; bit 63 (COPIED) is ${l1e.copied ? 'set: the L2 table is used only here (refcount 1)' : 'clear: the L2 table may be shared with a snapshot'}.`) +
      (l1e.reservedBits ? ' Reserved bits are set: the entry is corrupt.' : ''),
  });
  if (l1e.l2Offset === 0) return await finishUnallocated(img, t);
  if (l1e.l2Offset % cs !== 0) {
    t.result = 'error';
    t.error = `L2 table offset ${hex(l1e.l2Offset)} unaligned (L1 index: ${hex(l1Index)})`;
    steps.push({ title: 'Corrupt L1 entry', text: t.error });
    return t;
  }
  t.l2Offset = l1e.l2Offset;
  const l2 = await img.readL2(l1e.l2Offset);
  const l2EntryOffset = l1e.l2Offset + l2Index * img.l2EntrySize;
  t.l2EntryOffset = l2EntryOffset;
  const e = decodeL2Entry(l2, l2Index, img.geometry);
  t.clusterType = CLUSTER_TYPE_NAMES[e.type];
  const l2Ref = await getClusterRefcount(img, l1e.l2Offset / cs);
  steps.push({
    title: 'L2 entry',
    hostOffset: l2EntryOffset,
    raw: e.raw + (e.rawBitmap ? ' ' + e.rawBitmap : ''),
    text: `L2 table at ${hex(l1e.l2Offset)} (refcount ${l2Ref}), entry ${l2Index} at ${hex(l2EntryOffset)} = 0x${e.raw}` +
      (e.rawBitmap ? ` with subcluster bitmap 0x${e.rawBitmap}` : '') + `: ${describeL2(e.type, e.copied, e.zeroFlag)}`,
  });
  const hi = be32(l2, l2Index * img.l2EntrySize);
  const lo = be32(l2, l2Index * img.l2EntrySize + 4);
  const type = clusterType(hi, lo, img.geometry);
  if (type === ClusterType.Compressed) {
    const d = compressedDescriptor(hi, lo, img.clusterBits);
    t.result = 'compressed';
    t.hostOffset = d.hostOffset;
    t.hostCluster = Math.floor(d.hostOffset / cs);
    steps.push({
      title: 'Compressed cluster',
      hostOffset: d.hostOffset,
      text: `Bit 62 is set: the cluster is compressed. Its compressed bytes start at host offset ${hex(d.hostOffset)} and take at most ${d.compressedSize} bytes (${d.nbSectors} sectors). ` +
        `The whole cluster is decompressed and byte ${hex(offsetInCluster)} of the result is read.`,
    });
    return t;
  }
  if (img.geometry.extendedL2) {
    const sc = Math.floor(offsetInCluster / img.subclusterSize);
    t.subcluster = sc;
    const bit = 2 ** sc;
    const zero = Math.floor((e.zeroBitmap ?? 0) / bit) % 2 === 1;
    const alloc = Math.floor((e.allocBitmap ?? 0) / bit) % 2 === 1;
    steps.push({
      title: 'Subcluster',
      text: `Extended L2: the byte is in subcluster ${sc} of 32 (${img.subclusterSize} bytes each). Its "allocated" bit is ${alloc ? 'set' : 'clear'} and its "reads as zero" bit is ${zero ? 'set' : 'clear'}.`,
    });
    if (zero) return finish(t, 'zero', 'The subcluster reads as zeros.');
    if (!alloc || e.hostOffset === 0) return await finishUnallocated(img, t);
  } else if (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc) {
    return finish(t, 'zero', 'Bit 0 (zero flag) is set: the cluster reads as zeros, without looking at a backing file.');
  } else if (type === ClusterType.Unallocated) {
    return await finishUnallocated(img, t);
  }
  const host = e.hostOffset + offsetInCluster;
  t.hostOffset = host;
  t.hostCluster = Math.floor(host / cs);
  t.refcount = await getClusterRefcount(img, t.hostCluster);
  t.result = 'data';
  steps.push({
    title: 'Host cluster',
    hostOffset: host,
    text: `Bits 9–55 give the data cluster at host offset ${hex(e.hostOffset)} (host cluster ${t.hostCluster}, refcount ${t.refcount}${t.refcount > 1 ? ': shared, so a write would copy it first' : ''}). ` +
      `Guest byte ${hex(guestOffset)} is at host offset ${hex(e.hostOffset)} + ${hex(offsetInCluster)} = ${hex(host)}.`,
  });
  return t;
}

function describeL2(type: ClusterType, copied: boolean, zero: boolean): string {
  switch (type) {
    case ClusterType.Compressed: return 'a compressed cluster (bit 62).';
    case ClusterType.ZeroPlain: return 'zero flag set, no host cluster: reads as zeros.';
    case ClusterType.ZeroAlloc: return `zero flag set with a preallocated host cluster: reads as zeros${copied ? ' (COPIED)' : ''}.`;
    case ClusterType.Unallocated: return zero ? 'unallocated (zero flag with extended L2 is reserved).' : 'unallocated: offset 0.';
    default: return `a normal cluster; bit 63 (COPIED) is ${copied ? 'set: refcount exactly 1, writable in place' : 'clear: the cluster may be shared'}.`;
  }
}

function finish(t: Translation, result: TranslationResult, text: string): Translation {
  t.result = result;
  t.steps.push({ title: result === 'zero' ? 'Zeros' : 'Result', text });
  return t;
}

async function finishUnallocated(img: Qcow2Image, t: Translation): Promise<Translation> {
  const named = img.header.backingFile;
  const layer = img.backing ? ownLayer(img.backing) : null;
  if (layer instanceof Qcow2Image) {
    // qemu-img map's depth: the backing image's own translation, one level deeper.
    const name = layer.store.name;
    t.steps.push({ title: 'Backing file', text: `Nothing is allocated here in this image, so the byte is read from the backing file ${name} at the same guest offset.` });
    if (t.guestOffset >= layer.virtualSize) return backingShorter(t, name, layer.virtualSize);
    const sub = await translate(layer, layer.activeView(), t.guestOffset);
    // Steps already inside a deeper file keep that file's name ("In base.qcow2: L2 entry").
    for (const s of sub.steps.slice(1)) t.steps.push({ ...s, title: s.title.startsWith('In ') ? s.title : `In ${name}: ${s.title}` });
    const { steps: _steps, guestOffset: _g, depth, file, ...rest } = sub;
    Object.assign(t, rest, { depth: depth + 1, file: file ?? name });
    return t;
  }
  if (layer instanceof RawLayer) {
    const name = layer.store.name;
    if (t.guestOffset >= layer.virtualSize) return backingShorter(t, name, layer.virtualSize);
    Object.assign(t, { result: 'data', depth: 1, file: name, hostOffset: t.guestOffset, hostCluster: undefined, refcount: undefined });
    t.steps.push({ title: 'Backing file', text: `Nothing is allocated here in this image, so the byte is read from the raw backing file ${name}, where every guest byte is at its own offset: ${hex(t.guestOffset)}.` });
    return t;
  }
  if (layer) {
    t.result = 'backing';
    t.depth = 1;
    t.steps.push({ title: 'Backing file', text: 'Nothing is allocated here in this image, so the byte is read from the backing layer at the same guest offset.' });
  } else if (named !== undefined) {
    t.result = 'backing-missing';
    t.backingFile = named;
    t.depth = 1;
    t.steps.push({ title: 'Backing file', text: `Nothing is allocated here in this image, so the byte is in the backing file ${named} (not opened yet): open it as the backing file to follow the byte there.` });
  } else {
    t.result = 'unallocated';
    t.steps.push({ title: 'Unallocated', text: 'Nothing is allocated here and there is no backing file: the byte reads as zero.' });
  }
  return t;
}

function backingShorter(t: Translation, name: string, size: number): Translation {
  Object.assign(t, { result: 'zero', depth: 1, file: name });
  t.steps.push({ title: 'Zeros', text: `The backing file ${name} is ${size} bytes long, shorter than this disk: past its end the byte reads as zero.` });
  return t;
}
