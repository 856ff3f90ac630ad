// `info`: what qemu-img info reports, with its JSON field names (qcow2-reference.md §5.2, as
// printed by the qemu-img on this machine), built from an opened image. Also the human form.
import * as C from '../format/constants.ts';
import type { Snapshot } from '../format/snapshot-table.ts';
import { bitmapInfoFlags } from '../format/bitmaps.ts';
import { LUKS_HEADER_SIZE, parseLuksHeader, type LuksInfo } from '../format/luks.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';

export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

export interface Qcow2SpecificInfo {
  compat: '0.10' | '1.1';
  'compression-type': 'zlib' | 'zstd';
  'lazy-refcounts'?: boolean;
  'refcount-bits': number;
  corrupt?: boolean;
  'extended-l2'?: boolean;
  'data-file'?: string;
  'data-file-raw'?: boolean;
  bitmaps?: Array<{ name: string; granularity: number; flags: string[] }>;
  encrypt?: EncryptInfo;
}

export type EncryptInfo = LuksInfo | { format: 'aes' };

export interface ImageInfo {
  filename: string;
  format: 'qcow2';
  'virtual-size': number;
  'actual-size'?: number;
  'dirty-flag': boolean;
  'cluster-size': number;
  encrypted?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific': { type: 'qcow2'; data: Qcow2SpecificInfo };
}

export function snapshotInfo(sn: Snapshot): SnapshotInfo {
  // qemu-img 7.2's key order
  const s = {} as SnapshotInfo;
  if (sn.icount !== -1) s.icount = sn.icount;
  s['vm-clock-nsec'] = sn.vmClockNsec % 1e9;
  s.name = sn.name;
  s['date-sec'] = sn.dateSec;
  s['date-nsec'] = sn.dateNsec;
  s['vm-clock-sec'] = Math.floor(sn.vmClockNsec / 1e9);
  s.id = sn.idStr;
  s['vm-state-size'] = sn.vmStateSize;
  return s;
}

export interface InfoContext {
  filename: string;
  /** Bytes the file occupies on its medium (st_blocks·512 in Node); omitted when unknown. */
  actualSize?: number;
  /** The backing file name resolved as QEMU does (relative to the image's directory). */
  fullBackingFilename?: string;
  bitmaps?: Array<{ name: string; granularity: number; flags: string[] }>;
  /** From readEncryptInfo (it reads the file); without it a LUKS image has no `encrypt` block. */
  encrypt?: EncryptInfo;
}

export function buildInfo(img: Qcow2Image, ctx: InfoContext): ImageInfo {
  const h = img.header;
  const v3 = h.version >= 3;
  // qemu-img 7.2 prints its dictionaries in hash order; the keys below are built in that order
  // (observed on its output) so that the JSON compares equal as text too.
  const data = {} as Qcow2SpecificInfo;
  data.compat = v3 ? '1.1' : '0.10';
  data['compression-type'] = h.compressionType === C.COMPRESSION_ZSTD ? 'zstd' : 'zlib';
  if (v3) data['lazy-refcounts'] = (h.compatibleFeatures & C.COMPAT_LAZY_REFCOUNTS) !== 0n;
  // qemu-img info lists persistent bitmaps for v3 images (QEMU's qcow2_get_bitmap_info_list)
  const bitmaps = ctx.bitmaps ?? (v3
    ? img.bitmaps.map((b) => ({ flags: bitmapInfoFlags(b.flags), name: b.name, granularity: 2 ** b.granularityBits }))
    : []);
  if (bitmaps.length > 0) data.bitmaps = bitmaps;
  data['refcount-bits'] = 2 ** h.refcountOrder;
  if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
  const encrypt = ctx.encrypt ?? (h.cryptMethod === C.CRYPT_AES ? { format: 'aes' as const } : undefined);
  if (encrypt) data.encrypt = encrypt;
  if ((h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n) data['data-file-raw'] = (h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  if (v3) {
    data.corrupt = (h.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n;
    data['extended-l2'] = (h.incompatibleFeatures & C.INCOMPAT_EXTL2) !== 0n;
  }
  const info = {} as ImageInfo;
  if (h.backingFile !== undefined && h.backingFormat !== undefined) info['backing-filename-format'] = h.backingFormat;
  if (img.snapshots.length > 0) info.snapshots = img.snapshots.map(snapshotInfo);
  info['virtual-size'] = img.virtualSize;
  info.filename = ctx.filename;
  info['cluster-size'] = img.clusterSize;
  info.format = 'qcow2';
  if (ctx.actualSize !== undefined) info['actual-size'] = ctx.actualSize;
  info['format-specific'] = { type: 'qcow2', data };
  if (h.backingFile !== undefined) info['full-backing-filename'] = ctx.fullBackingFilename ?? h.backingFile;
  if (h.cryptMethod !== 0) info.encrypted = true;
  if (h.backingFile !== undefined) info['backing-filename'] = h.backingFile;
  info['dirty-flag'] = img.isDirty;
  return info;
}

/**
 * What qemu-img info says about the encryption: the LUKS header's layout (read from the area the
 * crypto header extension names), or `{format: "aes"}` for the legacy method; undefined when the
 * image is not encrypted or its LUKS header cannot be decoded.
 */
export async function readEncryptInfo(img: Qcow2Image): Promise<EncryptInfo | undefined> {
  const h = img.header;
  if (h.cryptMethod === C.CRYPT_AES) return { format: 'aes' };
  if (h.cryptMethod !== C.CRYPT_LUKS || !h.crypto || h.crypto.length < LUKS_HEADER_SIZE) return undefined;
  if (h.crypto.offset + LUKS_HEADER_SIZE > img.store.size()) return undefined;
  return parseLuksHeader(await img.store.read(h.crypto.offset, LUKS_HEADER_SIZE)) ?? undefined;
}

/**
 * IEC size as qemu-img prints it ("64 MiB", "336 KiB", "0.977 MiB"): QEMU's size_to_str, which
 * moves to the next unit once the value reaches 1000 of the current one, then printf's "%0.3g".
 */
export function sizeToStr(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  // frexp(val / (1000 / 1024), &e); i = (e - 1) / 10 (C division: truncates toward zero)
  const x = n / (1000 / 1024);
  let e = 0;
  while (e < 1100 && 2 ** e <= x) e++;
  const i = Math.min(units.length - 1, Math.trunc((e - 1) / 10));
  return `${formatG3(n / 2 ** (10 * i))} ${units[i]}`;
}

/**
 * printf("%.Nf", v) for v ≥ 0: rounded on the exact binary value with ties to even, as glibc
 * does (JavaScript's toFixed breaks exact ties upward: 3.125 gives "3.13", glibc "3.12").
 */
export function formatFixed(v: number, digits: number): string {
  const rounded = v.toFixed(digits);
  // the exact decimal expansion (every double below 2^53 has at most 100 fractional digits here)
  const exact = v.toFixed(100);
  const cut = exact.indexOf('.') + 1 + digits;
  if (!/^50*$/.test(exact.slice(cut))) return rounded;
  // an exact tie: keep the truncated value when its last digit is even
  const down = exact.slice(0, digits === 0 ? cut - 1 : cut);
  return Number(down.at(-1)) % 2 === 0 ? down : rounded;
}

/**
 * printf("%0.3g", v) for v ≥ 0: three significant digits rounded on the exact binary value (ties
 * to even, as glibc does), trailing zeros dropped, exponent form outside [1e-4, 1e3).
 */
function formatG3(v: number): string {
  if (v === 0) return '0';
  // the exact decimal expansion of the double (100 significant digits cover every double ≥ 1e-40)
  const exact = v.toPrecision(100);
  const [mant = '', e] = exact.split('e');
  const [intPart = '', fracPart = ''] = mant.split('.');
  const all = intPart + fracPart;
  const first = all.search(/[1-9]/);
  const digits = all.slice(first);
  // decimal exponent of the first significant digit
  let exp = intPart.length - 1 - first + (e !== undefined ? Number(e) : 0);
  let head = Number(digits.slice(0, 3).padEnd(3, '0'));
  const rest = digits.slice(3).replace(/0+$/, '');
  if (rest !== '' && (rest[0]! > '5' || (rest[0] === '5' && (rest.length > 1 || head % 2 === 1)))) head++;
  if (head === 1000) {
    head = 100;
    exp++;
  }
  if (exp < -4 || exp >= 3) {
    const mant = String(head / 100).replace(/\.?0+$/, '');
    return `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const value = head * 10 ** (exp - 2);
  return value.toFixed(Math.max(0, 2 - exp)).replace(/\.0+$/, '').replace(/(\.\d*?)0+$/, '$1');
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

function formatDate(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function formatVmClock(nsec: number): string {
  const ms = Math.floor(nsec / 1e6);
  const secs = Math.floor(ms / 1000);
  return `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(ms % 1000).padStart(3, '0')}`;
}

const utf8 = new TextEncoder();

/** printf's `%-Ns`: pads to N bytes (a name with non-ASCII characters gets fewer spaces than characters suggest). */
function padEndBytes(s: string, n: number): string {
  return s + ' '.repeat(Math.max(0, n - utf8.encode(s).length));
}

/** The snapshot list as qemu-img 7.2 prints it (header `%-10s%-17s%8s%20s%13s%11s`). */
export function formatSnapshotList(list: SnapshotInfo[]): string {
  const rows = ['Snapshot list:', `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`];
  for (const s of list) {
    const clock = formatVmClock(s['vm-clock-sec'] * 1e9 + s['vm-clock-nsec']);
    rows.push(`${padEndBytes(s.id, 9)} ${padEndBytes(s.name, 16)} ${sizeToStr(s['vm-state-size']).padStart(8)}${formatDate(s['date-sec']).padStart(20)}${clock.padStart(13)}${(s.icount === undefined ? '' : String(s.icount)).padStart(11)}`);
  }
  return rows.join('\n');
}

export function formatInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)`,
  ];
  if (info['actual-size'] !== undefined) lines.push(`disk size: ${sizeToStr(info['actual-size'])}`);
  if (info.encrypted) lines.push('encrypted: yes');
  lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['backing-filename']) {
    const full = info['full-backing-filename'];
    lines.push(`backing file: ${info['backing-filename']}${full && full !== info['backing-filename'] ? ` (actual path: ${full})` : ''}`);
    if (info['backing-filename-format']) lines.push(`backing file format: ${info['backing-filename-format']}`);
  }
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  if (info.snapshots) lines.push(formatSnapshotList(info.snapshots));
  const d = info['format-specific'].data;
  lines.push('Format specific information:');
  lines.push(`    compat: ${d.compat}`);
  lines.push(`    compression type: ${d['compression-type']}`);
  if (d['lazy-refcounts'] !== undefined) lines.push(`    lazy refcounts: ${d['lazy-refcounts']}`);
  if (d.bitmaps) {
    lines.push('    bitmaps:');
    for (const b of d.bitmaps) lines.push(`        [${d.bitmaps.indexOf(b)}]:`, `            flags:`, ...b.flags.map((f, i) => `                [${i}]: ${f}`), `            name: ${b.name}`, `            granularity: ${b.granularity}`);
  }
  lines.push(`    refcount bits: ${d['refcount-bits']}`);
  // qemu-img 7.2's order (its QAPI visitor): data file, data file raw, then corrupt
  if (d['data-file']) lines.push(`    data file: ${d['data-file']}`);
  if (d.encrypt) {
    lines.push('    encrypt:');
    for (const [k, v] of Object.entries(d.encrypt)) {
      if (k !== 'slots') {
        lines.push(`        ${k.replaceAll('-', ' ')}: ${String(v)}`);
        continue;
      }
      lines.push('        slots:');
      (v as LuksInfo['slots']).forEach((slot, i) => {
        lines.push(`            [${i}]:`, ...Object.entries(slot).map(([sk, sv]) => `                ${sk.replaceAll('-', ' ')}: ${String(sv)}`));
      });
    }
  }
  if (d['data-file-raw'] !== undefined) lines.push(`    data file raw: ${d['data-file-raw']}`);
  if (d.corrupt !== undefined) lines.push(`    corrupt: ${d.corrupt}`);
  if (d['extended-l2'] !== undefined) lines.push(`    extended l2: ${d['extended-l2']}`);
  return lines.join('\n');
}
