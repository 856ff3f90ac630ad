#!/usr/bin/env node
// `npm run bench`: qcowscope's CLI against qemu-img on the same images, in one run, timed
// alternately (whole process, Node start-up included). Prints median wall time, the ratio, the
// engine ratio (ours minus a bare `node -e 0` timed right after each run, over qemu-img's time),
// CPU time (user+sys) and peak RSS of both. See BENCHMARKS.md for what the figures mean.
//
//   node scripts/bench.mjs [--sizes 64G,256G,1T] [--reps 5] [--ops info,map,check,repair,export,snapshot]
//                          [--dir DIR] [--json FILE] [--no-warmup] [--rebuild] [--cli FILE] [--browser]
//                          [--save-sizes 256M,2G]   (--browser, or --ops browser-save: a person's file in the browser;
//                                                    also 8G, and meta-SIZE: preallocation=metadata, no save)
//
// --sizes also takes the hostile shapes snaps65535, c2m and r64 (see HOSTILE below), e.g.
//   node scripts/bench.mjs --sizes snaps65535,c2m,r64 --ops info,check,repair,snapshot-create
// Images: made once with qemu-img (`-o preallocation=metadata`, sparse, plus one internal snapshot
// named `base`) in DIR (default: <os tmpdir>/qcowscope-bench) and reused by later runs.
// Snapshot create / revert / delete act on fresh sparse copies (`cp --sparse=always`, synced
// before timing), one per timed run.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { browserTable, runBrowserBench } from './bench/browser.mjs';
import { runSaveBench, saveTable } from './bench/browser-save.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ALL_OPS = ['info', 'map', 'check', 'repair', 'export', 'snapshot-create', 'snapshot-revert', 'snapshot-delete'];
const OP_ALIASES = { snapshot: ['snapshot-create', 'snapshot-revert', 'snapshot-delete'], create: ['snapshot-create'], revert: ['snapshot-revert'], delete: ['snapshot-delete'] };
/** A run that takes longer than this is stopped and the operation is reported as too slow. */
const RUN_TIMEOUT_MS = 10 * 60 * 1000;

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '64G,256G,1T' },
    reps: { type: 'string', default: '5' },
    ops: { type: 'string', default: ALL_OPS.join(',') },
    dir: { type: 'string', default: path.join(os.tmpdir(), 'qcowscope-bench') },
    json: { type: 'string' },
    'no-warmup': { type: 'boolean', default: false },
    rebuild: { type: 'boolean', default: false },
    cli: { type: 'string' },
    browser: { type: 'boolean', default: false },
    'save-sizes': { type: 'string', default: '256M,2G' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (args.help) {
  process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 12).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
  process.exit(0);
}

/** The CLI under test: dist/cli/qcowscope.mjs, or a copy given with --cli (a build that others' rebuilds cannot change mid-run). */
const CLI = path.resolve(args.cli ?? path.join(ROOT, 'dist/cli/qcowscope.mjs'));
const reps = Math.max(1, Number(args.reps) | 0);
const sizes = args.sizes.split(',').map((s) => s.trim()).filter(Boolean);
const ops = [...new Set(args.ops.split(',').map((s) => s.trim()).filter(Boolean).flatMap((o) => OP_ALIASES[o] ?? [o]))];
for (const o of ops) if (!ALL_OPS.includes(o) && o !== 'browser' && o !== 'browser-save') die(`unknown operation '${o}' (known: ${ALL_OPS.join(', ')}, snapshot, browser, browser-save)`);
const dir = args.dir;
fs.mkdirSync(dir, { recursive: true });

function die(msg) {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

function sh(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 30, ...opts });
  if (r.error) throw r.error;
  return r;
}

function must(cmd, argv, opts) {
  const r = sh(cmd, argv, opts);
  if (r.status !== 0) die(`${cmd} ${argv.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

// ---- the machine ------------------------------------------------------------------------------

function machine() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? '?';
  const mem = /MemTotal:\s*(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1];
  return {
    cpu: model.trim(),
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    memGiB: mem ? Math.round((Number(mem) / 1024 / 1024) * 10) / 10 : undefined,
    node: process.version,
    qemuImg: sh('qemu-img', ['--version']).stdout.split('\n')[0],
    kernel: os.release(),
    loadavg: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}

// ---- images -----------------------------------------------------------------------------------

function sizeBytes(s) {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)$/i.exec(s);
  if (!m) die(`bad size '${s}' (use e.g. 64G, 256G, 1T)`);
  return Math.round(Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase()));
}

/**
 * Hostile shapes (issue 15), named in --sizes in place of a size; each has a snapshot `base`.
 *   snaps65535  512-byte clusters, 1 MiB of data, snapshot `base`, then nb_snapshots = 65535 (the
 *               other entries run past the end of the file and read as zeros, as the fuzzer made it)
 *   c2m         2 MiB clusters, 1 GiB disk, 64 MiB of data
 *   r64         512-byte clusters with 64-bit refcounts, 64 MiB disk, 8 MiB of data
 */
const HOSTILE = {
  snaps65535: (f) => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', f, '64M']);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', f]);
    must('qemu-img', ['snapshot', '-c', 'base', f]);
    const fd = fs.openSync(f, 'r+');
    const b = Buffer.alloc(4);
    b.writeUInt32BE(65535);
    fs.writeSync(fd, b, 0, 4, 60);
    fs.closeSync(fd);
  },
  c2m: (f) => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', f, '1G']);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64M', f]);
    must('qemu-img', ['snapshot', '-c', 'base', f]);
  },
  r64: (f) => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', f, '64M']);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 8M', f]);
    must('qemu-img', ['snapshot', '-c', 'base', f]);
  },
};

/** meta-<size>.qcow2: preallocation=metadata + snapshot `base`; `.ready` marks a finished one. */
function ensureImage(size) {
  if (HOSTILE[size]) {
    const file = path.join(dir, `hostile-${size}.qcow2`);
    if (fs.existsSync(file + '.ready')) return file;
    fs.rmSync(file, { force: true });
    HOSTILE[size](file);
    fs.writeFileSync(file + '.ready', new Date().toISOString() + '\n');
    return file;
  }
  const file = path.join(dir, `meta-${size}.qcow2`);
  const ready = file + '.ready';
  if (fs.existsSync(file) && fs.existsSync(ready)) return file;
  process.stderr.write(`bench: making ${file} (qemu-img create -o preallocation=metadata, snapshot -c base)...\n`);
  const tmp = file + '.tmp';
  fs.rmSync(tmp, { force: true });
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', tmp, String(sizeBytes(size))]);
  must('qemu-img', ['snapshot', '-c', 'base', tmp]);
  fs.renameSync(tmp, file);
  fs.writeFileSync(ready, new Date().toISOString() + '\n');
  return file;
}

/** A fresh sparse copy, flushed so that its write-back is not charged to the timed command. */
function freshCopy(src, dst) {
  fs.rmSync(dst, { force: true });
  must('cp', ['--sparse=always', src, dst]);
  const fd = fs.openSync(dst, 'r+');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

// ---- our CLI ------------------------------------------------------------------------------------

function ensureCli() {
  if (args.rebuild || !fs.existsSync(CLI)) {
    process.stderr.write(`bench: building the CLI (node scripts/build-cli.mjs --outfile ${CLI})...\n`);
    must(process.execPath, [path.join(ROOT, 'scripts/build-cli.mjs'), '--outfile', CLI], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  }
}

/** Which verbs our CLI has now (the engine lands piece by piece). */
function probeSupport() {
  const help = sh(process.execPath, [CLI, '--help']).stdout;
  const verbs = new Set([...help.matchAll(/qcowscope (\w+)/g)].map((m) => m[1]));
  const support = {
    info: verbs.has('info'),
    map: verbs.has('map'),
    check: verbs.has('check'),
    repair: verbs.has('check'),
    export: verbs.has('export'),
  };
  // snapshot -c/-a/-d: try them on a tiny image and ask qemu-img whether they worked
  const tiny = path.join(dir, 'probe.qcow2');
  fs.rmSync(tiny, { force: true });
  must('qemu-img', ['create', '-q', '-f', 'qcow2', tiny, '1M']);
  const list = () => sh('qemu-img', ['snapshot', '-l', tiny]).stdout;
  const ok = (flag, name) => sh(process.execPath, [CLI, 'snapshot', flag, name, tiny]).status === 0;
  support['snapshot-create'] = verbs.has('snapshot') && ok('-c', 'probe') && /\bprobe\b/.test(list());
  if (!support['snapshot-create']) must('qemu-img', ['snapshot', '-c', 'probe', tiny]);
  support['snapshot-revert'] = verbs.has('snapshot') && ok('-a', 'probe');
  support['snapshot-delete'] = verbs.has('snapshot') && ok('-d', 'probe') && !/\bprobe\b/.test(list());
  for (const op of ['snapshot-create', 'snapshot-revert', 'snapshot-delete']) {
    if (support[op] && sh('qemu-img', ['check', tiny]).status !== 0) support[op] = false;
  }
  fs.rmSync(tiny, { force: true });
  return support;
}

// ---- one timed run ------------------------------------------------------------------------------

const TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null;

/**
 * Run a command to completion: wall time (ms, measured here), CPU time (user+sys, s) and peak
 * RSS (KiB) from GNU time, or by polling /proc/<pid>/status (VmHWM) when it is missing.
 */
function timed(argv, stdoutFile) {
  const out = stdoutFile ? fs.openSync(stdoutFile, 'w') : 'ignore';
  const errFile = path.join(dir, 'stderr.txt');
  const err = fs.openSync(errFile, 'w');
  try {
    if (TIME) {
      const tf = path.join(dir, 'time.txt');
      const t0 = process.hrtime.bigint();
      const r = spawnSync(TIME, ['-f', '%U %S %M', '-o', tf, ...argv], { stdio: ['ignore', out, err], timeout: RUN_TIMEOUT_MS });
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.error) throw r.error;
      const [u, s, m] = fs.readFileSync(tf, 'utf8').trim().split('\n').pop().split(' ').map(Number);
      // GNU time exits with the command's status (or reports a signal)
      return { wall, cpu: u + s, rssKiB: m, status: r.status, timedOut: r.signal === 'SIGTERM' };
    }
    return timedByPolling(argv, out, err);
  } finally {
    if (typeof out === 'number') fs.closeSync(out);
    fs.closeSync(err);
  }
}

function timedByPolling(argv, out, err) {
  // Synchronous polling from a helper process keeps this script free of event-loop timing noise.
  const helper = `
    const { spawn } = require('node:child_process'); const fs = require('node:fs');
    const argv = JSON.parse(process.argv[1]); const t0 = process.hrtime.bigint();
    const c = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 3, 4] }); let hwm = 0; let cpu = 0;
    const tick = () => { try { const s = fs.readFileSync('/proc/' + c.pid + '/status', 'utf8'); hwm = Math.max(hwm, Number(/VmHWM:\\s*(\\d+)/.exec(s)?.[1] ?? 0));
      const st = fs.readFileSync('/proc/' + c.pid + '/stat', 'utf8').split(') ')[1].split(' '); cpu = (Number(st[11]) + Number(st[12])) / 100; } catch {} };
    const iv = setInterval(tick, 2); tick();
    c.on('exit', (code) => { clearInterval(iv); process.stdout.write(JSON.stringify({ wall: Number(process.hrtime.bigint() - t0) / 1e6, cpu, rssKiB: hwm, status: code })); });`;
  const r = spawnSync(process.execPath, ['-e', helper, JSON.stringify(argv)], { stdio: ['ignore', 'pipe', 'inherit', out, err], encoding: 'utf8', timeout: RUN_TIMEOUT_MS });
  return { ...JSON.parse(r.stdout), timedOut: r.signal === 'SIGTERM' };
}

// ---- operations ---------------------------------------------------------------------------------

const ours = (...a) => [process.execPath, CLI, ...a];

/**
 * Each operation: the two command lines on an image, an optional per-run setup (not timed),
 * and what to compare between the two outputs (once, on the first timed run).
 */
function operation(op, image, size) {
  const work = path.join(dir, `work-${size}.qcow2`);
  const raw = path.join(dir, `export-${size}.raw`);
  switch (op) {
    case 'info': return { ours: ours('info', image), qemu: ['qemu-img', 'info', image] };
    case 'map': return { ours: ours('map', '--json', image), qemu: ['qemu-img', 'map', '--output=json', image], compare: 'stdout' };
    case 'check': return { ours: ours('check', image), qemu: ['qemu-img', 'check', image], compare: 'stdout+status' };
    case 'repair': return {
      ours: ours('check', '-r', 'all', work), qemu: ['qemu-img', 'check', '-r', 'all', work],
      setup: () => freshCopy(image, work), cleanup: () => fs.rmSync(work, { force: true }), verify: work,
    };
    case 'export': return {
      ours: ours('export', image, raw), qemu: ['qemu-img', 'convert', '-O', 'raw', image, raw],
      setup: () => fs.rmSync(raw, { force: true }), cleanup: () => fs.rmSync(raw, { force: true }), compare: 'size', output: raw,
    };
    case 'snapshot-create': return {
      ours: ours('snapshot', '-c', 'bench', work), qemu: ['qemu-img', 'snapshot', '-c', 'bench', work],
      setup: () => freshCopy(image, work), cleanup: () => fs.rmSync(work, { force: true }), verify: work,
    };
    case 'snapshot-revert': return {
      ours: ours('snapshot', '-a', 'base', work), qemu: ['qemu-img', 'snapshot', '-a', 'base', work],
      setup: () => freshCopy(image, work), cleanup: () => fs.rmSync(work, { force: true }), verify: work,
    };
    case 'snapshot-delete': return {
      ours: ours('snapshot', '-d', 'base', work), qemu: ['qemu-img', 'snapshot', '-d', 'base', work],
      setup: () => freshCopy(image, work), cleanup: () => fs.rmSync(work, { force: true }), verify: work,
    };
  }
  throw new Error(op);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** Time one operation on one image: warm-up, then `reps` alternating pairs. */
function bench(op, size, image) {
  const spec = operation(op, image, size);
  const outOurs = path.join(dir, 'out-ours.txt');
  const outQemu = path.join(dir, 'out-qemu.txt');
  const res = { op, size, ours: [], qemu: [], bare: [], notes: [] };
  const runOne = (who, record) => {
    spec.setup?.();
    const r = timed(who === 'ours' ? spec.ours : spec.qemu, who === 'ours' ? outOurs : outQemu);
    let extra = {};
    if (record && spec.verify) {
      // judge the result of the write with qemu-img check (not timed)
      const c = sh('qemu-img', ['check', spec.verify]);
      extra = { clean: c.status === 0 };
      if (c.status !== 0) res.notes.push(`${who}: qemu-img check after the run exited ${c.status}`);
    }
    if (record && spec.output && fs.existsSync(spec.output)) extra.outputSize = fs.statSync(spec.output).size;
    spec.cleanup?.();
    if (r.timedOut) throw Object.assign(new Error(`${who} ${op} ${size}: over ${RUN_TIMEOUT_MS / 1000} s, stopped`), { timedOut: true });
    if (r.status !== 0 && !((op === 'check' || op === 'repair') && r.status <= 3)) {
      const msg = fs.readFileSync(path.join(dir, 'stderr.txt'), 'utf8').trim().split('\n').pop();
      throw new Error(`${who} ${op} ${size} exited ${r.status}: ${msg}`);
    }
    if (record) res[who].push({ ...r, ...extra });
    return r;
  };
  if (!args['no-warmup']) {
    runOne('ours', false);
    runOne('qemu', false);
  }
  for (let i = 0; i < reps; i++) {
    // alternate who goes first, so neither always runs on a warmer or cooler machine
    const order = i % 2 === 0 ? ['ours', 'qemu'] : ['qemu', 'ours'];
    for (const who of order) {
      runOne(who, true);
      // a bare Node start (`node -e 0`) right after ours: our process minus it is the engine's own work
      if (who === 'ours') res.bare.push(timed([process.execPath, '-e', '0']));
      if (i === 0 && who === order[1]) compareOutputs(spec, res, outOurs, outQemu);
    }
  }
  return res;
}

function compareOutputs(spec, res, outOurs, outQemu) {
  if (spec.compare === 'stdout' || spec.compare === 'stdout+status') {
    const same = fs.readFileSync(outOurs).equals(fs.readFileSync(outQemu));
    res.notes.push(same ? 'output identical' : 'OUTPUT DIFFERS');
    if (spec.compare === 'stdout+status' && res.ours[0].status !== res.qemu[0].status) {
      res.notes.push(`exit ${res.ours[0].status} vs ${res.qemu[0].status}`);
    }
  } else if (spec.compare === 'size') {
    const a = res.ours[0].outputSize;
    const b = res.qemu[0].outputSize;
    if (a !== b) res.notes.push(`OUTPUT SIZE DIFFERS (${a} vs ${b})`);
  }
  if (res.ours[0]?.clean === true && res.qemu[0]?.clean === true) res.notes.push('both results check clean');
}

// ---- report -------------------------------------------------------------------------------------

function summarize(r) {
  const m = (who, k) => median(r[who].map((x) => x[k]));
  return {
    op: r.op, size: r.size,
    oursWallMs: m('ours', 'wall'), qemuWallMs: m('qemu', 'wall'),
    ratio: m('ours', 'wall') / m('qemu', 'wall'),
    cpuRatio: m('ours', 'cpu') / Math.max(m('qemu', 'cpu'), 0.005),
    // the engine's own work: each of our runs minus the bare Node start timed next to it, over qemu-img's whole process
    bareWallMs: m('bare', 'wall'),
    engineRatio: median(r.ours.map((x, i) => x.wall - r.bare[i].wall)) / m('qemu', 'wall'),
    oursCpuS: m('ours', 'cpu'), qemuCpuS: m('qemu', 'cpu'),
    oursRssMiB: Math.max(...r.ours.map((x) => x.rssKiB)) / 1024, qemuRssMiB: Math.max(...r.qemu.map((x) => x.rssKiB)) / 1024,
    notes: r.notes,
  };
}

function table(rows) {
  const head = ['operation', 'size', 'ours (s)', 'qemu-img (s)', 'ratio', 'node -e 0 (s)', 'engine ratio', 'ours cpu (s)', 'qemu cpu (s)', 'cpu ratio', 'ours RSS (MiB)', 'qemu RSS (MiB)', 'notes'];
  const body = rows.map((s) => s.skipped
    ? [s.op, s.size, '—', '—', '—', '—', '—', '—', '—', '—', '—', '—', s.skipped]
    : [s.op, s.size, (s.oursWallMs / 1000).toFixed(3), (s.qemuWallMs / 1000).toFixed(3), s.ratio.toFixed(2),
      (s.bareWallMs / 1000).toFixed(3), s.engineRatio.toFixed(2),
      s.oursCpuS.toFixed(2), s.qemuCpuS.toFixed(2), s.cpuRatio.toFixed(2), s.oursRssMiB.toFixed(0), s.qemuRssMiB.toFixed(0), s.notes.join('; ')]);
  // long messages (a failure's stderr) in full in the JSON results, shortened here
  for (const r of body) if (r[12].length > 120) r[12] = r[12].slice(0, 117) + '...';
  const w = head.map((h, i) => Math.max(h.length, ...body.map((r) => String(r[i]).length)));
  const line = (r) => '| ' + r.map((c, i) => String(c).padEnd(w[i])).join(' | ') + ' |';
  return [line(head), '|' + w.map((x) => '-'.repeat(x + 2)).join('|') + '|', ...body.map(line)].join('\n');
}

// ---- main ---------------------------------------------------------------------------------------

const started = new Date();
ensureCli();
const mach = machine();
process.stderr.write(`bench: ${mach.cpu}, ${mach.nproc} CPUs, ${mach.memGiB} GiB, Node ${mach.node}, ${mach.qemuImg}; load ${mach.loadavg}\n`);
process.stderr.write(`bench: sizes ${sizes.join(', ')}; ${reps} timed runs each, alternating${args['no-warmup'] ? '' : ', after one warm-up each'}; dir ${dir}\n`);
if (!TIME) process.stderr.write('bench: /usr/bin/time not found (apt package `time`): peak RSS by polling /proc, CPU time approximate\n');
const support = probeSupport();
const images = Object.fromEntries(sizes.map((s) => [s, ensureImage(s)]));
const rows = [];
const raw = [];
for (const op of ops.filter((o) => !o.startsWith('browser'))) {
  for (const size of sizes) {
    if (!support[op]) {
      rows.push({ op, size, skipped: `our CLI has no ${op.replace('-', ' ')} yet` });
      continue;
    }
    process.stderr.write(`bench: ${op} ${size}...\n`);
    try {
      const r = bench(op, size, images[size]);
      raw.push(r);
      rows.push(summarize(r));
    } catch (e) {
      rows.push({ op, size, skipped: `failed: ${e.message}` });
    }
  }
}
let browser;
if (args.browser || ops.includes('browser')) {
  try {
    browser = await runBrowserBench({ root: ROOT, dir, sizes, images, reps });
  } catch (e) {
    browser = { error: e.message };
  }
}
let browserSave;
if (args.browser || ops.includes('browser-save')) {
  try {
    browserSave = await runSaveBench({ root: ROOT, dir, sizes: args['save-sizes'].split(',').map((x) => x.trim()).filter(Boolean) });
  } catch (e) {
    browserSave = { error: e.message };
  }
}
const finished = new Date();
mach.loadavgEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ');
const ratioNote = 'ratio = our median wall time / qemu-img median wall time (whole process; below 1 is faster); engine ratio = median of (each of our runs minus a bare `node -e 0` run right after it) / qemu-img median wall time (the engine\'s own work, Node start-up taken out); cpu = user+sys (GNU time, 10 ms resolution; qemu-img below 5 ms counts as 5 ms in the cpu ratio)';
process.stdout.write(`\nqcowscope vs qemu-img — ${finished.toISOString()}\n${mach.cpu}, ${mach.nproc} CPUs, ${mach.memGiB} GiB; Node ${mach.node}; ${mach.qemuImg}\n`);
process.stdout.write(`load average ${mach.loadavg} at start, ${mach.loadavgEnd} at end; ${reps} runs each\n\n`);
process.stdout.write(table(rows) + '\n\n' + ratioNote + '\n');
if (browser) process.stdout.write('\n' + browserTable(browser) + '\n');
if (browserSave) process.stdout.write('\n' + saveTable(browserSave) + '\n');
const commit = sh('git', ['-C', ROOT, 'log', '-1', '--format=%h %s']).stdout.trim();
const result = { started: started.toISOString(), finished: finished.toISOString(), commit, cli: CLI, machine: mach, reps, sizes, rows, runs: raw, browser, browserSave };
const jsonFile = args.json ?? path.join(dir, `results-${finished.toISOString().replace(/[:.]/g, '-')}.json`);
fs.writeFileSync(jsonFile, JSON.stringify(result, null, 2) + '\n');
process.stderr.write(`bench: results in ${jsonFile}\n`);
