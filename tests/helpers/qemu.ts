// Helpers for interop tests: QEMU's own tools (qemu-img, qemu-io) as the oracle, temp dirs, and
// byte-level file access (poke/peek/hash). Everything is synchronous (spawnSync/fs.*Sync) so a
// test reads top to bottom; a failing tool is reported, never thrown, unless the `...Ok` variant
// is used.
//
// Written against qemu-img/qemu-io 7.2 (Debian bookworm, `qemu-img --version` → 7.2.22). Quirks of
// that version that matter to callers are noted where they bite:
//   - `info --output=json` has no `children` key (added in 8.0) and omits `snapshots` when there
//     are none; JSON key order is hash order, never rely on it.
//   - `map --output=json` has no `compressed` key (added in 8.2); it prints one object per line
//     inside a JSON array, which JSON.parse reads fine.
//   - `check --output=json` prints optional counters only when non-zero and prints nothing on
//     stdout when the image cannot be opened (exit 1, message on stderr).
//   - `snapshot -l` uses the 7.2 layout (`VM SIZE`, `VM CLOCK`, 2-digit hours); use
//     qemuSnapshotList (parsed from `info --output=json`) instead of scraping it.
//   - `snapshot -d` looks a snapshot up by NAME only (`-a` takes an ID or a name).
//   - qemu-io exits 1 when a `read -P` pattern check fails, but prints most other command errors
//     with exit status 0: check `stderr`/`stdout` too.
import { spawnSmall } from './spawner.ts';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface RunResult {
  /** Exit status; null when the process was killed by a signal (see `signal`). */
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): RunResult {
  // started by a small helper process (spawner.ts says why)
  const r = spawnSmall(cmd, args, opts);
  if (r.error) throw r.error; // binary missing: a setup problem, not a test result
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function describeFailure(cmd: string, args: string[], r: RunResult): string {
  return `${cmd} ${args.join(' ')} failed (status ${r.status}${r.signal ? `, signal ${r.signal}` : ''}):\n${r.stderr}${r.stdout}`;
}

/** Run qemu-img; never throws on a non-zero exit. */
export function qemuImg(args: string[]): RunResult {
  return run('qemu-img', args);
}

/** Run qemu-img and throw (with its stderr) unless it exits 0. Returns stdout. */
export function qemuImgOk(args: string[]): string {
  const r = qemuImg(args);
  if (r.status !== 0) throw new Error(describeFailure('qemu-img', args, r));
  return r.stdout;
}

/**
 * `qemu-img create` of an encrypted image (args after `create`), in `cwd`. LUKS creation times
 * PBKDF2 on this CPU first, and on a loaded machine QEMU's timing can fail ("Unable to get
 * accurate CPU usage"): that failure, and only that one, is retried. Throws on any other.
 */
export function qemuImgCreateEncrypted(args: string[], cwd?: string): void {
  for (let attempt = 1; ; attempt++) {
    const r = run('qemu-img', ['create', ...args], { cwd });
    if (r.status === 0) return;
    if (attempt >= 10 || !/accurate CPU usage/.test(r.stderr)) throw new Error(describeFailure('qemu-img', ['create', ...args], r));
  }
}

/** Run qemu-io (args as given, e.g. ['-f', 'qcow2', '-c', 'write 0 64k', file]); never throws. */
export function qemuIo(args: string[]): RunResult {
  return run('qemu-io', args);
}

/**
 * Run qemu-io commands on a qcow2 image and throw unless every command succeeded. qemu-io 7.2
 * reports many command failures only in its output, so anything on stderr or a "failed" line
 * counts as failure.
 */
export function qemuIoOk(file: string, ...commands: string[]): string {
  const args = ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file];
  const r = qemuIo(args);
  if (r.status !== 0 || r.stderr.trim() !== '' || /failed|error/i.test(r.stdout)) {
    throw new Error(describeFailure('qemu-io', args, r));
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

/** A fresh directory under the OS temp dir (Playwright empties its own output dirs; we don't use them). */
export function makeTempDir(prefix = 'qcowscope-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// Images

export interface CreateOptions {
  clusterSize?: number;
  refcountBits?: 1 | 2 | 4 | 8 | 16 | 32 | 64;
  compat?: '0.10' | '1.1';
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  backing?: string;
  /** Backing format; defaults to qcow2 when `backing` is given. */
  backingFormat?: string;
  /** Any other `-o` options, passed through verbatim. */
  extra?: string[];
}

/** `qemu-img create -f qcow2 [-o ...] [-b B -F fmt] PATH SIZE`; size in bytes or with a suffix ("64M"). */
export function createImage(file: string, size: number | string | undefined, opts: CreateOptions = {}): void {
  const o: string[] = [];
  if (opts.clusterSize !== undefined) o.push(`cluster_size=${opts.clusterSize}`);
  if (opts.refcountBits !== undefined) o.push(`refcount_bits=${opts.refcountBits}`);
  if (opts.compat !== undefined) o.push(`compat=${opts.compat}`);
  if (opts.lazyRefcounts !== undefined) o.push(`lazy_refcounts=${opts.lazyRefcounts ? 'on' : 'off'}`);
  if (opts.extendedL2 !== undefined) o.push(`extended_l2=${opts.extendedL2 ? 'on' : 'off'}`);
  if (opts.compressionType !== undefined) o.push(`compression_type=${opts.compressionType}`);
  if (opts.preallocation !== undefined) o.push(`preallocation=${opts.preallocation}`);
  if (opts.extra) o.push(...opts.extra);
  const args = ['create', '-q', '-f', 'qcow2'];
  if (o.length) args.push('-o', o.join(','));
  if (opts.backing !== undefined) args.push('-b', opts.backing, '-F', opts.backingFormat ?? 'qcow2');
  args.push(file);
  if (size !== undefined) args.push(String(size));
  qemuImgOk(args);
}

/**
 * Parsed `qemu-img info --output=json` (field names are qemu-img's). Throws if qemu-img cannot open
 * the image. QemuInfo and QemuMapEntry are deliberate twins of core/analysis/info.ts and
 * core/image/layer.ts: they type QEMU's output, the answer our engine's is compared with.
 */
export function qemuInfo(file: string): QemuInfo {
  return JSON.parse(qemuImgOk(['info', '--output=json', file])) as QemuInfo;
}

// qemu-img's JSON, typed here independently of core/analysis/info.ts and core/image/layer.ts,
// which produce the same field names: deliberate twins, so the oracle's types are not ours.
export interface QemuSnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  /** Omitted when the snapshot has no icount (−1 on disk). */
  icount?: number;
}

export interface QemuInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size': number;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  encrypted?: boolean;
  /** Omitted when there are no snapshots. */
  snapshots?: QemuSnapshotInfo[];
  'format-specific'?: {
    type: string;
    data: {
      compat: '0.10' | '1.1';
      'refcount-bits': number;
      'compression-type'?: 'zlib' | 'zstd';
      'lazy-refcounts'?: boolean;
      corrupt?: boolean;
      'extended-l2'?: boolean;
      [k: string]: unknown;
    };
  };
  [k: string]: unknown;
}

export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset; absent for unallocated, compressed (and backing-only) ranges. */
  offset?: number;
  /** 8.2+ only: absent with qemu-img 7.2. */
  compressed?: boolean;
}

/** Parsed `qemu-img map --output=json`. */
export function qemuMap(file: string): QemuMapEntry[] {
  return JSON.parse(qemuImgOk(['map', '--output=json', file])) as QemuMapEntry[];
}

/** Host cluster → the guest byte ranges [start, length] stored in it (merged), by qemu-img map of the active disk. */
export function qemuGuestRangesByCluster(file: string, clusterSize: number): Map<number, Array<[number, number]>> {
  const out = new Map<number, Array<[number, number]>>();
  for (const e of qemuMap(file)) {
    if (!e.data || e.offset === undefined) continue;
    for (let g = e.start; g < e.start + e.length; g += clusterSize) {
      const c = Math.floor((e.offset + g - e.start) / clusterSize);
      const list = out.get(c) ?? [];
      const last = list[list.length - 1];
      if (last && last[0] + last[1] === g) last[1] += clusterSize;
      else list.push([g, clusterSize]);
      out.set(c, list);
    }
  }
  return out;
}

/** `qemu-img check --output=json` JSON (QAPI ImageCheck): counters absent when zero. */
export interface QemuCheckJson {
  filename: string;
  format: string;
  'check-errors': number;
  'image-end-offset'?: number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

export interface QemuCheckResult {
  /** 0 clean, 1 check could not complete, 2 corruptions, 3 leaks only (state after repair with -r). */
  exitCode: number;
  /** null when qemu-img printed no JSON (the image could not be opened or the check failed). */
  json: QemuCheckJson | null;
  /** Counters with absent ones read as 0 (0 also when json is null). */
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** Per-item diagnostics (ERROR ..., Leaked cluster ..., Repairing ...) go to stderr. */
  stderr: string;
}

/** `qemu-img check --output=json [-r leaks|all] FILE`, parsed; never throws on a non-zero exit. */
export function qemuCheck(file: string, repair?: 'leaks' | 'all'): QemuCheckResult {
  const args = ['check', '--output=json'];
  if (repair) args.push('-r', repair);
  args.push(file);
  const r = qemuImg(args);
  let json: QemuCheckJson | null = null;
  const text = r.stdout.trim();
  if (text.startsWith('{')) json = JSON.parse(text) as QemuCheckJson;
  return {
    exitCode: r.status ?? -1,
    json,
    corruptions: json?.corruptions ?? 0,
    leaks: json?.leaks ?? 0,
    checkErrors: json?.['check-errors'] ?? 0,
    corruptionsFixed: json?.['corruptions-fixed'] ?? 0,
    leaksFixed: json?.['leaks-fixed'] ?? 0,
    stderr: r.stderr,
  };
}

/** A snapshot to read with `convert -l`: a number is an ID, `{name}` a name. */
export type SnapshotRef = number | string | { id: string | number } | { name: string };

/** `qemu-img convert -O raw [-l snapshot.id=N | -l snapshot.name=X] IMAGE OUT`. */
export function qemuConvertToRaw(file: string, out: string, snapshot?: SnapshotRef): void {
  const args = ['convert', '-O', 'raw'];
  if (snapshot !== undefined) {
    let spec: string;
    if (typeof snapshot === 'number') spec = `snapshot.id=${snapshot}`;
    else if (typeof snapshot === 'string') spec = snapshot; // ID or name: qemu-img tries ID, then name
    else if ('id' in snapshot) spec = `snapshot.id=${snapshot.id}`;
    else spec = `snapshot.name=${snapshot.name}`;
    args.push('-l', spec);
  }
  args.push(file, out);
  qemuImgOk(args);
}

/** The snapshots as qemu-img lists them (from `info --output=json`; [] when none). */
export function qemuSnapshotList(file: string): QemuSnapshotInfo[] {
  return qemuInfo(file).snapshots ?? [];
}

/** `qemu-img snapshot -c NAME FILE`. */
export function qemuSnapshotCreate(file: string, name: string): RunResult {
  return qemuImg(['snapshot', '-c', name, file]);
}

/** `qemu-img snapshot -a ID_OR_NAME FILE`. */
export function qemuSnapshotApply(file: string, idOrName: string): RunResult {
  return qemuImg(['snapshot', '-a', idOrName, file]);
}

/** `qemu-img snapshot -d NAME FILE` (7.2 looks up by name only). */
export function qemuSnapshotDelete(file: string, name: string): RunResult {
  return qemuImg(['snapshot', '-d', name, file]);
}

function byteArg(pattern: number): string {
  if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) throw new RangeError(`pattern ${pattern} is not a byte`);
  return '0x' + pattern.toString(16).padStart(2, '0');
}

/** Guest write of `len` bytes of `pattern` at guest `offset`, by qemu-io. */
export function writePattern(file: string, offset: number, len: number, pattern: number): void {
  qemuIoOk(file, `write -P ${byteArg(pattern)} ${offset} ${len}`);
}

/** Guest zero write (`write -z`, zero clusters where possible), by qemu-io. */
export function writeZeroes(file: string, offset: number, len: number): void {
  qemuIoOk(file, `write -z ${offset} ${len}`);
}

/** Guest discard by qemu-io. */
export function discard(file: string, offset: number, len: number): void {
  qemuIoOk(file, `discard ${offset} ${len}`);
}

/** True when qemu-io reads `len` bytes of `pattern` at guest `offset` (`read -P`). */
export function verifyPattern(file: string, offset: number, len: number, pattern: number): boolean {
  const r = qemuIo(['-f', 'qcow2', '-c', `read -P ${byteArg(pattern)} ${offset} ${len}`, file]);
  return r.status === 0 && !/fail|error/i.test(r.stdout + r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Raw file access

/** Hex SHA-256 of a whole file (streamed in 1 MiB chunks, fine for sparse multi-GiB files). */
export function sha256(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Hex SHA-256 of bytes. */
export function sha256Bytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** `len` bytes of a file at `offset`; bytes past the end read as zeros. */
export function readRange(file: string, offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < len) {
      const n = fs.readSync(fd, out, done, len - done, offset + done);
      if (n <= 0) break;
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** Alias of readRange, for symmetry with poke. */
export const peek = readRange;

export function peekU16(file: string, offset: number): number {
  return Buffer.from(readRange(file, offset, 2)).readUInt16BE(0);
}
export function peekU32(file: string, offset: number): number {
  return Buffer.from(readRange(file, offset, 4)).readUInt32BE(0);
}
export function peekU64(file: string, offset: number): bigint {
  return Buffer.from(readRange(file, offset, 8)).readBigUInt64BE(0);
}

/** Write raw bytes into a file at `offset` (iotests' poke_file), growing it if needed. */
export function poke(file: string, offset: number, bytes: Uint8Array | number[]): void {
  const data = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
  const fd = fs.openSync(file, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  } finally {
    fs.closeSync(fd);
  }
}

export function pokeU8(file: string, offset: number, value: number): void {
  poke(file, offset, [value & 0xff]);
}
export function pokeU16(file: string, offset: number, value: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  poke(file, offset, b);
}
export function pokeU32(file: string, offset: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  poke(file, offset, b);
}
export function pokeU64(file: string, offset: number, value: number | bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, BigInt(value)));
  poke(file, offset, b);
}

/** Set a file's length (qemu iotests' `truncate`). */
export function truncateFile(file: string, size: number): void {
  fs.truncateSync(file, size);
}

export function fileSize(file: string): number {
  return fs.statSync(file).size;
}
