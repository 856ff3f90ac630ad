// The browser part of `npm run bench` (--browser, or `--ops browser`): the production build
// (dist/web) in Chromium, the engine worker driven directly over its Comlink protocol, timing
//   open  = openFile(File) / openHandle(OPFS handle): header, L1, reftable, snapshot table, summary
//   map   = clusterMap(id): the owner of every host cluster (the web app's Cluster map view)
// and, for the File, the everyday operations (issue 18's targets): check (next to `qemu-img check`
// on the same file, timed in the same run), revert to and delete the image's snapshot `base`, and
// download (until the Blob to save is in the page's hands)
// for an image given as a File (what a drop or the file input gives) and as a file in the origin
// private file system (the app's handle path over an OPFS handle). The OPFS copy is written
// sparsely (only the file's data segments, then truncate), in an on-disk persistent profile
// (Playwright's default in-memory context would hold the whole file in memory).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

const MIME = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
  '.webmanifest': 'application/manifest+json', '.svg': 'image/svg+xml', '.png': 'image/png', '.map': 'application/json',
};

/** A static server for dist/web on 127.0.0.1 (no vite process to clean up). */
export function serve(root) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    let file = path.join(root, decodeURIComponent(url.pathname));
    if (!file.startsWith(root)) {
      res.writeHead(403).end();
      return;
    }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!fs.existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** The file's data segments (SEEK_DATA/SEEK_HOLE), to copy it into OPFS sparsely. */
export function dataSegments(file) {
  const py = `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); end = os.fstat(fd).st_size; pos = 0; out = []
while pos < end:
    try: d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE); out.append('%d %d' % (d, h)); pos = h
sys.stdout.write('\\n'.join(out))`;
  const r = spawnSync('python3', ['-c', py, file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error('python3 could not list the data segments');
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split(' ').map(Number));
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** In the page: a minimal Comlink client for the engine worker (APPLY messages, RAW values). */
const PAGE_HELPERS = `
window.__bench = (() => {
  let worker; let nextId = 1; const waiting = new Map();
  const start = (url) => {
    worker = new Worker(url, { type: 'module' });
    worker.addEventListener('message', (ev) => {
      const w = waiting.get(ev.data && ev.data.id);
      if (!w) return;
      waiting.delete(ev.data.id);
      if (ev.data.type === 'HANDLER' && ev.data.name === 'throw') {
        const v = ev.data.value;
        w.reject(new Error(v.qcow ? v.qcow.code + ': ' + v.qcow.message : String(v.value && v.value.message || v.value)));
      } else w.resolve(ev.data.value);
    });
  };
  const call = (name, ...args) => new Promise((resolve, reject) => {
    const id = String(nextId++);
    waiting.set(id, { resolve, reject });
    worker.postMessage({ id, type: 'APPLY', path: [name], argumentList: args.map((value) => ({ type: 'RAW', value })) });
  });
  return { start, call };
})();`;

export async function runBrowserBench({ root, dir, sizes, images, reps }) {
  // a copy of the build, so that a rebuild by someone else cannot change it under the run
  const web = path.join(dir, 'web');
  fs.rmSync(web, { recursive: true, force: true });
  if (fs.existsSync(path.join(root, 'dist/web/index.html'))) fs.cpSync(path.join(root, 'dist/web'), web, { recursive: true });
  const assets = path.join(web, 'assets');
  const workerFile = fs.existsSync(assets) ? fs.readdirSync(assets).find((f) => /^engine\.worker-.*\.js$/.test(f)) : undefined;
  if (!workerFile) return { skipped: 'no production build of the web app (npm run build:web): dist/web/assets/engine.worker-*.js missing' };
  const chromium = ['/usr/bin/chromium', process.env.CHROMIUM_PATH].find((p) => p && fs.existsSync(p));
  if (!chromium) return { skipped: 'Chromium not found (/usr/bin/chromium, apt package chromium)' };
  let pw;
  try {
    pw = await import('@playwright/test');
  } catch {
    return { skipped: '@playwright/test is not installed' };
  }
  // up to the 256 GiB image (the size the web app issue names)
  const wanted = sizes.filter((s) => ['64G', '256G'].includes(s));
  if (wanted.length === 0) wanted.push(sizes[0]);
  const server = await serve(web);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const profile = path.join(dir, 'chromium-profile');
  fs.rmSync(profile, { recursive: true, force: true });
  const ctx = await pw.chromium.launchPersistentContext(profile, { executablePath: chromium, args: CHROMIUM_ARGS, headless: true });
  const out = { chromium: spawnSync(chromium, ['--version'], { encoding: 'utf8' }).stdout.trim(), results: [] };
  try {
    const page = ctx.pages()[0] ?? await ctx.newPage();
    await page.goto(url);
    await page.evaluate(PAGE_HELPERS);
    await page.evaluate((u) => window.__bench.start(u), `${url}assets/${workerFile}`);
    for (const size of wanted) {
      const image = images[size];
      // a File, as the file input gives it
      await page.evaluate(() => {
        const input = document.createElement('input');
        input.type = 'file';
        input.id = '__bench_file';
        input.style.display = 'none';
        document.body.append(input);
      });
      await page.setInputFiles('#__bench_file', image);
      const fileRuns = await openAndMapRuns(page, reps, 'file');
      // the everyday operations on a fresh open of the File each time (changes stay in the tab)
      const opRuns = [];
      for (let i = 0; i < reps; i++) {
        const q0 = performance.now();
        spawnSync('qemu-img', ['check', '-q', image]);
        const qemuCheck = performance.now() - q0;
        const r = await page.evaluate(async () => {
          const b = window.__bench;
          const file = document.getElementById('__bench_file').files[0];
          const s = await b.call('openFile', file);
          const id = s.state.id;
          const time = async (f) => { const t = performance.now(); await f(); return performance.now() - t; };
          const check = await time(() => b.call('check', id));
          const download = await time(() => b.call('download', id));
          const revert = await time(() => b.call('revertSnapshot', id, 'base'));
          const del = await time(() => b.call('deleteSnapshot', id, 'base'));
          await b.call('close', id);
          return { check, download, revert, delete: del };
        });
        opRuns.push({ ...r, qemuCheck });
      }
      const ops = Object.fromEntries(['check', 'qemuCheck', 'revert', 'delete', 'download'].map((k) => [k, median(opRuns.map((r) => r[k]))]));
      // the same image in OPFS, written sparsely (not timed). Chromium's quota counts the
      // logical size: an origin gets about 60% of the disk, so big images may not fit.
      const segments = dataSegments(image);
      const fileSize = fs.statSync(image).size;
      const sum = (runs) => ({ openMs: median(runs.map((r) => r.open)), mapMs: median(runs.map((r) => r.map)), clusters: runs[0]?.clusters, runs });
      const copied = await page.evaluate(async ({ segments, fileSize }) => {
        try {
        const file = document.getElementById('__bench_file').files[0];
        const root = await navigator.storage.getDirectory();
        await root.removeEntry('bench.qcow2').catch(() => {});
        const h = await root.getFileHandle('bench.qcow2', { create: true });
        const w = await h.createWritable();
        for (const [s, e] of segments) {
          for (let p = s; p < e; p += 16 << 20) {
            const n = Math.min(16 << 20, e - p);
            await w.write({ type: 'write', position: p, data: new Uint8Array(await file.slice(p, p + n).arrayBuffer()) });
          }
        }
        await w.truncate(fileSize);
        await w.close();
        return 'ok';
        } catch (e) {
          await (await navigator.storage.getDirectory()).removeEntry('bench.qcow2').catch(() => {});
          const q = await navigator.storage.estimate();
          return `${e.name}: ${e.message} (quota ${q.quota} bytes)`;
        }
      }, { segments, fileSize });
      if (copied !== 'ok') {
        out.results.push({ size, file: sum(fileRuns), ops, opfs: { skipped: `could not copy the image into OPFS: ${copied}` } });
        continue;
      }
      const opfsRuns = await openAndMapRuns(page, reps, 'opfs');
      await page.evaluate(async () => (await navigator.storage.getDirectory()).removeEntry('bench.qcow2'));
      out.results.push({ size, file: sum(fileRuns), ops, opfs: sum(opfsRuns) });
    }
  } finally {
    await ctx.close();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  return out;
}

/** Lines for the printed report. */
export function browserTable(b) {
  if (!b) return '';
  if (b.skipped || b.error) return `browser: ${b.skipped ?? 'failed: ' + b.error}`;
  const lines = [`browser (${b.chromium}; production build; engine worker driven directly; medians in seconds):`,
    '| image | source | open (s) | cluster map (s) | host clusters |', '|---|---|---|---|---|'];
  for (const r of b.results) {
    for (const src of ['file', 'opfs']) {
      if (r[src].skipped) {
        lines.push(`| ${r.size} | ${src === 'file' ? 'File' : 'OPFS handle'} | — | — | ${r[src].skipped} |`);
        continue;
      }
      lines.push(`| ${r.size} | ${src === 'file' ? 'File' : 'OPFS handle'} | ${(r[src].openMs / 1000).toFixed(3)} | ${(r[src].mapMs / 1000).toFixed(3)} | ${r[src].clusters} |`);
    }
  }
  lines.push('', 'everyday operations on the File (medians in seconds; check next to qemu-img check on the same file, same run):',
    '| image | check | qemu-img check | ratio | revert | delete | download starts |', '|---|---|---|---|---|---|---|');
  for (const r of b.results) {
    const o = r.ops;
    if (!o) continue;
    const f = (ms) => (ms / 1000).toFixed(3);
    lines.push(`| ${r.size} | ${f(o.check)} | ${f(o.qemuCheck)} | ${(o.check / o.qemuCheck).toFixed(2)}x | ${f(o.revert)} | ${f(o.delete)} | ${f(o.download)} |`);
  }
  return lines.join('\n');
}

/** Open the image `reps` times (the File from the page's input, or bench.qcow2 in OPFS through a
 *  handle) and build its complete cluster map; the open and map times of each run. */
async function openAndMapRuns(page, reps, via) {
  const runs = [];
  for (let i = 0; i < reps; i++) {
    runs.push(await page.evaluate(async (via) => {
      const source = via === 'file'
        ? document.getElementById('__bench_file').files[0]
        : await (await navigator.storage.getDirectory()).getFileHandle('bench.qcow2');
      const t0 = performance.now();
      const s = await window.__bench.call(via === 'file' ? 'openFile' : 'openHandle', source);
      const t1 = performance.now();
      const m = await window.__bench.call('clusterMap', s.state.id);
      const t2 = performance.now();
      await window.__bench.call('close', s.state.id);
      return { open: t1 - t0, map: t2 - t1, clusters: m.clusterCount };
    }, via));
  }
  return runs;
}

